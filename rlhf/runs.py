"""Run folders: what every stage writes beside its model (resolved config, metrics, log history).

A run folder is the unit the pipeline and the report read: ``rlhf_config.yaml`` (every option,
re-runnable with ``--config``), ``metrics.json`` (the stage's typed result, :mod:`rlhf.results`),
``log_history.jsonl`` (what the trainer logged, step by step) and ``checkpoint-*`` folders that
``--resume`` continues from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from rlhf.config import write_resolved_config
from rlhf.results import METRICS_FILE, clean
from rlhf.run_paths import CONFIG_FILE, read_run_config
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

HISTORY_FILE = "log_history.jsonl"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-*`` folder a killed run left (what ``--resume`` continues from)."""
    out = Path(output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def start(stage: str, output_dir: str, resume: bool) -> str | None:
    """Find the checkpoint to resume from (an error when ``resume`` finds none)."""
    out = Path(output_dir)
    checkpoint = last_checkpoint(out)
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in {out} to resume from")
    if checkpoint is not None and not resume:
        logger.warning("%s has checkpoints but --resume was not given: %s starts over", out, stage)
    return checkpoint if resume else None


def record_config(stage: str, output_dir: str, *configs: Any) -> None:
    """Write the resolved config (every option, defaults resolved) into the run folder.

    Called once the stage has resolved what the recipe left unset (dtypes, assistant-only loss),
    so the file says what ran and can be passed back with ``--config``.
    """
    if is_main_process():
        write_resolved_config(Path(output_dir) / CONFIG_FILE, stage, *configs)


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """A summary that is not a stage's typed result (the pipeline's annotation step) as ``metrics.json``."""
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps(clean(metrics), indent=2, sort_keys=True) + "\n")
    return path


def write_history(output_dir: str | Path, history: list[dict[str, Any]]) -> None:
    with (Path(output_dir) / HISTORY_FILE).open("w") as handle:
        for entry in history:
            handle.write(json.dumps(clean(entry)) + "\n")


read_config = read_run_config  # the resolved options, paths where they are now (torch-free, in rlhf.results)


def summarize_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last training loss and evaluation loss from a trainer's log history."""
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    summary: dict[str, Any] = {}
    if train:
        summary["first_train_loss"] = train[0]["loss"]
        summary["final_train_loss"] = train[-1]["loss"]
    if evals:
        summary["first_eval_loss"] = evals[0]["eval_loss"]
        summary["eval_loss"] = evals[-1]["eval_loss"]
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    if tokens:
        summary["tokens_seen"] = int(max(tokens))
    return summary
