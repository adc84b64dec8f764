"""`rlhf export`: ship an aligned adapter as the ecosystem reads it, and merged into its base.

Writes ``output_dir/adapter`` (the PEFT adapter as trained, with tokenizer and chat template),
``output_dir/merged`` (the adapter merged into its base: plain safetensors any tool loads), and a
model card (``README.md``): hub metadata whose ``base_model`` is the hub id at the root of the run's
lineage (a PPO run -> the SFT run whose merged model it trained on -> that run's base), the local
lineage in the body, how to load the adapter as trained (the quantization config and a snippet), what
the merged folder is, the recipe, data, metrics and evaluation table.

A QLoRA adapter loaded on its base in full precision (what ``base_model_name_or_path`` names) is
another model than the one trained; the export measures how far (:func:`rlhf.merging.full_precision_load`)
and states it in the card and ``metrics.json``.

The merge is checked before anything is called done (:mod:`rlhf.merging`): the merged model,
reloaded from disk, is compared with the model *as trained* (the base loaded as the run loaded it,
4-bit for QLoRA, plus the adapter), and must match it (KL per token, greedy agreement) and differ
from the base (one well-known RL framework shipped a merger that silently did not merge). A QLoRA
adapter is merged into the dequantized 4-bit weights it was trained on; merging it into the
original weights gives another model (``--merge_base original``, reported, not refused).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from huggingface_hub import ModelCardData

from rlhf import merging, models, runs
from rlhf.arguments import ModelArguments, merge_base_field
from rlhf.config import from_options, parse
from rlhf.models import MERGED_DIR
from rlhf.policy.roles import POLICY
from rlhf.results import (
    METRICS_FILE,
    EvalResult,
    Evaluation,
    ExportResult,
    FullPrecisionLoad,
    MergeCheck,
    PPOResult,
    Result,
    read_stage,
)
from rlhf.run_paths import CONFIG_FILE
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

DESCRIPTION = "Export an adapter (SFT or PPO run) as is and merged into its base, checked against the trained model."
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


@dataclass
class ExportConfig:
    """Which run to export and how."""

    run_dir: str | None = field(
        default=None, metadata={"help": "Run folder of `rlhf sft` or `rlhf ppo` (holds the adapter)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write; unset: <run_dir>/../export."})
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Export this checkpoint of the run (e.g. checkpoint-20, the one the report names where the "
            "conservative reward peaked) instead of its final adapter."
        },
    )
    merged_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the merged model.", "choices": ["bfloat16", "float16", "float32"]},
    )
    eval_dir: str | None = field(
        default=None, metadata={"help": "An `rlhf eval` folder whose table goes in the model card."}
    )
    merge_base: str = merge_base_field()
    max_kl: float | None = field(
        default=None,
        metadata={
            "help": "Largest mean KL per token allowed between the merged and the trained model. Unset: 1e-4 for "
            "float32 merges, 1e-2 for 16-bit ones."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id to upload the merged model to (needs HF_TOKEN)."}
    )


CONFIG_TYPES = [ExportConfig]


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


@dataclass(frozen=True)
class Link:
    """One run in an adapter's lineage: which stage made it, where it is, and what it trained on."""

    stage: str
    run_dir: str
    model: str  # the model_name_or_path it recorded, where that is now
    dataset: str | None = None
    reward_model: str | None = None


def made_by(model: str) -> Path | None:
    """The run folder of this toolkit that wrote a local model (an SFT run's ``merged/``), if one did."""
    path = Path(model)
    return path.parent if path.name == MERGED_DIR and (path.parent / CONFIG_FILE).is_file() else None


def lineage(run_dir: Path) -> list[Link]:
    """This run, then the run that made the model it trained on, and so on: the last link's model is the
    original base (a hub id, a built-in model, or a local folder no run of this toolkit wrote)."""
    links: list[Link] = []
    folder: Path | None = run_dir
    while folder is not None and str(folder) not in {link.run_dir for link in links}:
        options = runs.read_config(folder)
        stage = read_stage(folder).stage if (folder / METRICS_FILE).is_file() else "?"
        model = str(options["model_name_or_path"])
        links.append(Link(stage, str(folder), model, options.get("dataset_name"), options.get("reward_model_path")))
        folder = made_by(model)
    return links


HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")  # a hub repo id's shape


def hub_id(model: str) -> str | None:
    """``model`` if it names a model on the hub (not a local folder, not a built-in), else None."""
    if Path(model).expanduser().exists() or not HUB_ID.fullmatch(model) or ".." in model or "--" in model:
        return None
    return model


def _python(value: Any) -> str:
    """A value as Python source: torch dtypes as ``torch.<name>``, strings in double quotes."""
    if isinstance(value, torch.dtype):
        return f"torch.{str(value).removeprefix('torch.')}"
    return json.dumps(value) if isinstance(value, str) else repr(value)


QUANTIZATION_FIELDS = (
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_storage",
)


def load_snippet(model_args: ModelArguments, base: str) -> str:
    """Python that loads the adapter (in ``adapter/``) on its base exactly as the run trained it.

    The ``BitsAndBytesConfig`` is the one :func:`rlhf.models.quantization_config` built for training,
    written out field by field.
    """
    quantization = models.quantization_config(model_args)
    lines = [
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig",
        "",
    ]
    loading = f"dtype={_python(models.DTYPES.get(str(model_args.dtype), model_args.dtype))}"
    if quantization is not None:
        names = (
            [n for n in QUANTIZATION_FIELDS if n != "load_in_8bit"] if quantization.load_in_4bit else ["load_in_8bit"]
        )
        lines += ["quantization = BitsAndBytesConfig("]
        lines += [f"    {name}={_python(getattr(quantization, name))}," for name in names]
        lines += [")"]
        loading += ',\n    quantization_config=quantization,\n    device_map="auto"'
    lines += [
        f"base = AutoModelForCausalLM.from_pretrained(\n    {_python(base)},\n    {loading},\n)",
        'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        'model = PeftModel.from_pretrained(base, "adapter")',
    ]
    return "\n".join(lines)


def _lineage_lines(links: Sequence[Link]) -> list[str]:
    lines = ["## Lineage", ""]
    for number, link in enumerate(links, start=1):
        extra = f"; data `{link.dataset}`" if link.dataset else ""
        extra += f"; reward model `{link.reward_model}`" if link.reward_model else ""
        what = (
            "this adapter"
            if number == 1
            else f"its adapter merged into `{MERGED_DIR}/`: the model run {number - 1} trained on"
        )
        lines.append(f"{number}. `rlhf {link.stage}` run `{link.run_dir}` ({what}): trained on `{link.model}`{extra}.")
    root = links[-1].model
    hub = hub_id(root)
    kind = (
        "on the Hugging Face hub"
        if hub
        else "a built-in model of this toolkit, not on the hub"
        if root.startswith("builtin:")
        else "a local model folder"
    )
    return [*lines, "", f"Original base: `{root}` ({kind}).", ""]


def _loading_lines(model_args: ModelArguments, base: str, full: FullPrecisionLoad | None) -> list[str]:
    if full is None:
        return [
            "## Loading the adapter",
            "",
            f"The run trained on the base in full precision ({model_args.dtype}); this loads it as trained:",
            "",
            "```python",
            load_snippet(model_args, base),
            "```",
            "",
        ]
    return [
        "## Loading the adapter as trained",
        "",
        f"The adapter was trained on the base quantized {model_args.quantization} and reproduces the trained "
        "model only on the base quantized the same way:",
        "",
        "```python",
        load_snippet(model_args, base),
        "```",
        "",
        "On a CPU with AVX512-BF16, bitsandbytes runs 4-bit layers in inference through a bf16 kernel that moves "
        "the logits slightly; training turns it off (`support_avx512bf16_for_cpu = False` on every `Linear4bit`), "
        "which reproduces the trained model exactly. GPUs do not take that path.",
        "",
        "Loaded on the full-precision base instead (`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained"
        f"(base), 'adapter')`, float32), it is another model: mean KL {full.kl_vs_trained:.3e} nats per token "
        f"(max {full.max_kl_vs_trained:.3e}) against the model as trained, the same next token at "
        f"{full.argmax_agreement:.1%} of {full.tokens} positions; greedy answers to {full.prompts} prompts differ "
        f"at {full.greedy_tokens_changed} of {full.greedy_tokens} tokens ({full.greedy_answers_changed} of "
        f"{full.prompts} answers changed). For a model without bitsandbytes use `merged/`.",
        "",
    ]


def model_card(
    run_dir: Path,
    options: dict[str, Any],
    model_args: ModelArguments,
    trained: Result | None,
    evaluation: Evaluation | None,
    check: MergeCheck,
    *,
    full: FullPrecisionLoad | None = None,
    checkpoint: str | None = None,
    merged_dtype: str = "float32",
    library: str = "peft",
) -> str:
    """The export's README.md: hub metadata, what the files are, how to load them, lineage, how well it did.

    ``model_args``: the base as the run loaded it (dtypes resolved). ``library``: ``peft`` for the export
    folder's card (the adapter), ``transformers`` for ``merged/``'s copy.
    """
    stage = trained.stage if trained is not None else "?"
    base = models.resolve_model_path(model_args.model_name_or_path)
    links = lineage(run_dir)
    metadata = ModelCardData(library_name=library, base_model=hub_id(links[-1].model), tags=["rlhf", stage, "lora"])
    setup = ", ".join(f"{key}: {options.get(key)}" for key in ("quantization", "lora_r", "lora_alpha"))
    into = "dequantized 4-bit" if check.merge_base == "dequantized" else "original (full-precision)"
    as_trained = check.merge_base == "dequantized" or model_args.quantization == "none"
    which = "the weights it was trained on" if as_trained else "not the weights it was trained on"
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {run_dir.name}: {stage} adapter" + (f" ({Path(checkpoint).name})" if checkpoint else ""),
        "",
        f"Trained with `rlhf {stage}` (the `rlhf` toolkit) on `{model_args.model_name_or_path}` ({setup}).",
        "",
        f"- `adapter/`: the PEFT adapter as trained, with tokenizer and chat template; its base is `{base}`.",
        f"- `merged/`: a standalone model (no PEFT or bitsandbytes needed): the adapter merged into the {into} "
        f"weights of that base ({which}), saved in {merged_dtype}. "
        f"Against the model as trained ({model_args.quantization} base + adapter): KL {check.kl_vs_trained:.2e} "
        f"nats per token, same greedy token at {check.argmax_agreement:.1%} of {check.tokens} positions.",
        "",
        *_loading_lines(model_args, base, full),
        *_lineage_lines(links),
    ]
    source = evaluation or (trained.eval if isinstance(trained, PPOResult) else None)
    if source is not None:
        rows = [("policy", "gold score", "reward-model score", "length", "EOS rate")]
        for name, s in (("SFT", source.sft), ("PPO", source.ppo)):
            gold = f"{s.gold:.3f} ± {s.gold_stderr:.3f}" if s.gold is not None and s.gold_stderr is not None else "n/a"
            score = f"{s.reward:.3f} ± {s.reward_stderr:.3f}"
            rows.append((name, gold, score, f"{s.length:.1f}", f"{s.eos_rate:.2f}"))
        lines += ["## Evaluation (held-out prompts)", "", _table(rows), ""]
        lines.append(
            f"Prompts: {source.prompts}, seeds: {source.seeds}, KL(PPO || SFT): {source.kl_ppo_to_sft:.3f} nats/answer."
        )
        for judge, w in source.win_rate.items():
            interval = f"95% CI {w.ci_low:.1%}-{w.ci_high:.1%}"
            lines.append(f"PPO beats SFT by the {judge} judge {w.win_rate:.1%} of the time ({interval}).")
        lines.append("")
    summary = trained.numbers() if trained is not None else {}
    lines += ["## Training metrics", "", "```json", json.dumps(summary, indent=2, sort_keys=True), "```", ""]
    lines += ["## Recipe (resolved config)", "", "```yaml", yaml.safe_dump(options, sort_keys=True).strip(), "```", ""]
    return "\n".join(lines)


def _adapter_source(run_dir: Path, checkpoint: str | None) -> Path:
    """The folder whose adapter is exported: the run's, or a checkpoint's (a PPO checkpoint's policy adapter)."""
    if checkpoint is None:
        source = run_dir
    else:
        source = run_dir / Path(checkpoint).name
        if not source.is_dir():
            saved = sorted(p.name for p in run_dir.glob("checkpoint-*") if p.is_dir())
            raise ConfigError(f"checkpoint: {source} does not exist; {run_dir} has {', '.join(saved) or 'none'}")
        if (source / POLICY).is_dir():
            source = source / POLICY
    if not (source / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{source}: no adapter (adapter_model.safetensors) to export")
    return source


def run(config: ExportConfig) -> ExportResult:
    """Copy the adapter, merge it, check the merge against the trained model, write the model card."""
    started = time.time()
    if not config.run_dir:
        raise ConfigError("run_dir: the run folder of `rlhf sft` or `rlhf ppo` is required")
    run_dir = Path(config.run_dir)
    source = _adapter_source(run_dir, config.checkpoint)
    out = Path(config.output_dir) if config.output_dir else run_dir.parent / "export"
    options = runs.read_config(run_dir)
    trained = read_stage(run_dir) if (run_dir / METRICS_FILE).exists() else None
    evaluation = EvalResult.read(config.eval_dir) if config.eval_dir else None

    adapter_dir, merged_dir = out / "adapter", out / "merged"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:  # the adapter from its checkpoint (if one is named), the tokenizer from the run
        for folder in (source, run_dir):
            if (folder / name).exists():
                shutil.copy2(folder / name, adapter_dir / name)
                break
    (model_args,) = from_options([ModelArguments], options)
    models.resolve_dtypes(model_args, SimpleNamespace(bf16=options.get("bf16"), fp16=options.get("fp16")))
    _name_base(adapter_dir, models.resolve_model_path(model_args.model_name_or_path))
    check = merging.merge_and_verify(
        model_args, adapter_dir, merged_dir, config.merged_dtype, config.merge_base, config.max_kl
    )
    full = merging.full_precision_load(model_args, adapter_dir)
    for folder, library in ((out, "peft"), (merged_dir, "transformers")):
        card = model_card(
            run_dir,
            options,
            model_args,
            trained,
            evaluation,
            check,
            full=full,
            checkpoint=config.checkpoint,
            merged_dtype=config.merged_dtype,
            library=library,
        )
        (folder / "README.md").write_text(card)
    result = ExportResult(
        output_dir=str(out),
        run_dir=str(run_dir),
        base=model_args.model_name_or_path,
        merged_dtype=config.merged_dtype,
        merge=check,
        hub_base=hub_id(lineage(run_dir)[-1].model),
        full_precision=full,
        pushed_to=push(merged_dir, config.push_to_hub) if config.push_to_hub else None,
        runtime_seconds=round(time.time() - started, 1),
    )
    result.write(out)
    return result


def _name_base(adapter_dir: Path, base: str) -> None:
    """Point the exported adapter's ``base_model_name_or_path`` at its base where it is now (a run folder
    that moved recorded the old place), so ``AutoPeftModel`` loads it from any directory."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def push(folder: Path, repo_id: str) -> str:
    """Upload a folder to the hub; needs a token (HF_TOKEN) and network access to the hub."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("push_to_hub: set HF_TOKEN to a token with write access")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return repo_id


def main(argv: Sequence[str] | None = None) -> ExportResult:
    """``rlhf export``: parse the flags, then :func:`run`."""
    (config,) = parse(CONFIG_TYPES, argv, prog="rlhf export", description=DESCRIPTION)
    return run(config)
