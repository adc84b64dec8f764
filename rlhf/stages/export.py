"""`rlhf export`: ship an aligned adapter as the ecosystem reads it, and merged into its base.

Writes ``output_dir/adapter`` (the PEFT adapter as trained, with tokenizer and chat template),
``output_dir/merged`` (the adapter merged into its base: plain safetensors any tool loads), and a
model card (``README.md``) with the base model, recipe, data, metrics and evaluation table.

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
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from rlhf import merging, models, runs
from rlhf.config import ModelArguments, from_options, merge_base_field, parse
from rlhf.core.errors import ConfigError
from rlhf.ppo.roles import POLICY
from rlhf.results import METRICS_FILE, EvalResult, Evaluation, ExportResult, MergeCheck, PPOResult, Result, read_stage

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


def model_card(
    run_dir: Path,
    options: dict[str, Any],
    trained: Result | None,
    evaluation: Evaluation | None,
    check: MergeCheck,
    checkpoint: str | None = None,
) -> str:
    """The export's README.md: what the model is, how it was made, and how well it did."""
    stage = trained.stage if trained is not None else "?"
    base = options.get("model_name_or_path")
    setup = ", ".join(f"{key}: {options.get(key)}" for key in ("quantization", "lora_r", "lora_alpha"))
    reward = f" Reward model: `{options['reward_model_path']}`." if options.get("reward_model_path") else ""
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base}",
        f"tags: [rlhf, {stage}, lora]",
        "---",
        "",
        f"# {run_dir.name}: {stage} adapter" + (f" ({Path(checkpoint).name})" if checkpoint else ""),
        "",
        f"Trained with `rlhf {stage}` (the `rlhf` toolkit) on `{base}` ({setup}).",
        f"Data: `{options.get('dataset_name')}`.{reward}",
        "",
        "- `adapter/`: the PEFT adapter; load with `PeftModel.from_pretrained(base, 'adapter')`.",
        f"- `merged/`: the adapter merged into the {check.merge_base} base weights (safetensors). Against the "
        f"model as trained ({options.get('quantization')} base + adapter): KL {check.kl_vs_trained:.2e} nats per "
        f"token, same greedy token at {check.argmax_agreement:.1%} of {check.tokens} positions.",
        "",
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
    check = merging.merge_and_verify(
        model_args, adapter_dir, merged_dir, config.merged_dtype, config.merge_base, config.max_kl
    )
    card = model_card(run_dir, options, trained, evaluation, check, config.checkpoint)
    (out / "README.md").write_text(card)
    (merged_dir / "README.md").write_text(card)
    result = ExportResult(
        output_dir=str(out),
        run_dir=str(run_dir),
        base=model_args.model_name_or_path,
        merged_dtype=config.merged_dtype,
        merge=check,
        pushed_to=push(merged_dir, config.push_to_hub) if config.push_to_hub else None,
        runtime_seconds=round(time.time() - started, 1),
    )
    result.write(out)
    return result


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
