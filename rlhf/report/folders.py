"""Reading a run folder for the report: a pipeline's stages, its rounds, the RL history across rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.results import METRICS_FILE, RoundResult


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's rows (none when the stage did not write it: any stage may be missing)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object (empty when the stage did not write it)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def round_folders(run_dir: Path) -> list[Path]:
    """A multi-round pipeline's ``round-N`` folders, in round order (none for a one-round run)."""
    found = [p for p in run_dir.glob("round-*") if p.is_dir() and p.name.removeprefix("round-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("round-")))


def read_rounds(run_dir: Path) -> list[RoundResult]:
    """The finished rounds of a multi-round pipeline folder, in order."""
    return [RoundResult.read(r) for r in round_folders(run_dir) if (r / METRICS_FILE).is_file()]


def stage_folder(run_dir: Path, stage: str) -> Path:
    """Where a pipeline folder keeps a stage: the last round's folder for the stages rounds repeat."""
    rounds = round_folders(run_dir)
    if rounds and (rounds[-1] / stage).is_dir():
        return rounds[-1] / stage
    return run_dir / stage


def rl_history(run_dir: Path) -> list[dict[str, Any]]:
    """The RL iterations' metrics, every round's in order (iterations numbered across rounds)."""
    folders = [r / "ppo" for r in round_folders(run_dir)] or [run_dir / "ppo"]
    history: list[dict[str, Any]] = []
    for number, folder in enumerate(folders, start=1):
        offset = history[-1]["step"] if history else 0
        history += [{**h, "step": h["step"] + offset, "round": number} for h in read_jsonl(folder / "metrics.jsonl")]
    return history


def ppo_folder(run_dir: Path) -> Path:
    """A pipeline folder's ``ppo/`` (its last round's), or a PPO run folder itself."""
    folder = stage_folder(run_dir, "ppo")
    return folder if (folder / METRICS_FILE).is_file() else run_dir
