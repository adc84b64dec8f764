"""`rlhf export`: ship an aligned adapter as the ecosystem reads it, and merged into its base.

Writes ``output_dir/adapter`` (the PEFT adapter as trained, with tokenizer and chat template),
``output_dir/merged`` (the adapter merged into a full-precision copy of its base: plain safetensors
any tool loads), and a model card (``README.md``) with the base model, recipe, data, metrics and
evaluation table. The merge is checked before anything is called done: the merged model must
reproduce base+adapter logits and its weights must differ from the base (one well-known RL
framework shipped a merger that silently did not merge).
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
from typing import Any

import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import models, runs
from rlhf.config import ConfigError, parse

logger = logging.getLogger(__name__)

DESCRIPTION = "Export an adapter (SFT or PPO run) as is and merged into a full-precision model, with a model card."
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
PROBE = [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "Sure! 3 plus 4 is 7."}]


@dataclass
class ExportConfig:
    """Which run to export and how."""

    run_dir: str | None = field(
        default=None, metadata={"help": "Run folder of `rlhf sft` or `rlhf ppo` (holds the adapter)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write; unset: <run_dir>/../export."})
    merged_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the merged model.", "choices": ["bfloat16", "float16", "float32"]},
    )
    eval_dir: str | None = field(
        default=None, metadata={"help": "An `rlhf eval` folder whose table goes in the model card."}
    )
    tolerance: float = field(default=1e-3, metadata={"help": "Max |logit| difference merged vs base+adapter."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id to upload the merged model to (needs HF_TOKEN)."}
    )


CONFIG_TYPES = [ExportConfig]


@torch.no_grad()
def verify_merge(base_path: str, adapter_dir: Path, merged_dir: Path) -> dict[str, float]:
    """Logit difference merged vs base+adapter, and how far the merged weights moved from the base."""
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    ids = torch.tensor([tokenizer.apply_chat_template(PROBE, tokenize=True, return_dict=True)["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    base_logits = base(ids).logits
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    adapted_logits = PeftModel.from_pretrained(base, str(adapter_dir)).eval()(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_logits = merged(ids).logits
    moved = sum(
        float((v.float() - base_weights[k].float()).abs().sum())
        for k, v in merged.state_dict().items()
        if k in base_weights
    )
    return {
        "max_logit_diff_vs_adapter": float((merged_logits - adapted_logits).abs().max()),
        "max_logit_diff_vs_base": float((merged_logits - base_logits).abs().max()),
        "weight_change_l1": moved,
    }


def _table(rows: list[tuple[str, ...]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def model_card(
    run_dir: Path, options: dict[str, Any], metrics: dict[str, Any], evaluation: dict[str, Any] | None
) -> str:
    """The export's README.md: what the model is, how it was made, and how well it did."""
    stage = metrics.get("stage", "?")
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
        f"# {run_dir.name}: {stage} adapter",
        "",
        f"Trained with `rlhf {stage}` (the `rlhf` toolkit) on `{base}` ({setup}).",
        f"Data: `{options.get('dataset_name')}`.{reward}",
        "",
        "- `adapter/`: the PEFT adapter; load with `PeftModel.from_pretrained(base, 'adapter')`.",
        "- `merged/`: the adapter merged into a full-precision copy of the base (safetensors).",
        "",
    ]
    source = evaluation or metrics.get("eval")
    if source and "sft" in source and "ppo" in source:
        rows = [("policy", "gold score", "reward-model score", "length", "EOS rate")]
        for policy in ("sft", "ppo"):
            s = source[policy]
            gold = f"{s['gold']:.3f} ± {s['gold_stderr']:.3f}" if "gold" in s else "n/a"
            score = f"{s['reward']:.3f} ± {s['reward_stderr']:.3f}"
            rows.append((policy.upper(), gold, score, f"{s['length']:.1f}", f"{s['eos_rate']:.2f}"))
        kl = source.get("kl_ppo_to_sft", 0.0)
        lines += ["## Evaluation (held-out prompts)", "", _table(rows), ""]
        lines.append(
            f"Prompts: {source.get('prompts')}, seeds: {source.get('seeds')}, KL(PPO || SFT): {kl:.3f} nats/answer."
        )
        for judge, w in source.get("win_rate", {}).items():
            interval = f"95% CI {w['ci_low']:.1%}-{w['ci_high']:.1%}"
            lines.append(f"PPO beats SFT by the {judge} judge {w['win_rate']:.1%} of the time ({interval}).")
        lines.append("")
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    lines += ["## Training metrics", "", "```json", json.dumps(summary, indent=2, sort_keys=True), "```", ""]
    lines += ["## Recipe (resolved config)", "", "```yaml", yaml.safe_dump(options, sort_keys=True).strip(), "```", ""]
    return "\n".join(lines)


def run(config: ExportConfig) -> dict[str, Any]:
    started = time.time()
    if not config.run_dir:
        raise ConfigError("run_dir: the run folder of `rlhf sft` or `rlhf ppo` is required")
    run_dir = Path(config.run_dir)
    if not (run_dir / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{run_dir}: no adapter (adapter_model.safetensors) to export")
    out = Path(config.output_dir) if config.output_dir else run_dir.parent / "export"
    options = runs.read_config(run_dir)
    metrics = runs.read_metrics(run_dir) if (run_dir / runs.METRICS_FILE).exists() else {}
    evaluation = runs.read_metrics(config.eval_dir) if config.eval_dir else None

    adapter_dir, merged_dir = out / "adapter", out / "merged"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, adapter_dir / name)
    base = str(options["model_name_or_path"])
    models.merge_adapter(base, adapter_dir, merged_dir, config.merged_dtype)
    check = verify_merge(models.resolve_model_path(base), adapter_dir, merged_dir)
    tolerance = config.tolerance if config.merged_dtype == "float32" else max(config.tolerance, 0.1)
    if check["max_logit_diff_vs_adapter"] > tolerance:
        raise RuntimeError(f"merged model does not reproduce base+adapter: {check}")
    if check["weight_change_l1"] == 0.0:
        raise RuntimeError(f"merged weights equal the base: the adapter was not merged ({check})")
    card = model_card(run_dir, options, metrics, evaluation)
    (out / "README.md").write_text(card)
    (merged_dir / "README.md").write_text(card)
    result = {"stage": "export", "run_dir": str(run_dir), "base": base, "merged_dtype": config.merged_dtype, **check}
    if config.push_to_hub:
        result["pushed_to"] = push(merged_dir, config.push_to_hub)
    result["runtime_seconds"] = round(time.time() - started, 1)
    runs.write_metrics(out, result)
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    (config,) = parse(CONFIG_TYPES, argv, prog="rlhf export", description=DESCRIPTION)
    return run(config)
