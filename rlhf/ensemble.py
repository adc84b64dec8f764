"""Reward-model ensembles: the folder format, and how members' scores become one conservative reward.

A policy optimised against one learned reward model finds where that model is wrong (over-optimisation:
its score keeps rising while a person's judgement stops improving). Several reward models trained on
resamples of the same preferences disagree most where the data taught them least, so their spread is
a measure of how far a score can be trusted there (Coste et al. 2023, https://arxiv.org/abs/2310.02743):

* ``mean``: the members' mean;
* ``uwo`` (uncertainty-weighted optimisation): the mean minus ``uwo_coef`` times the variance across
  members: a high score the members disagree on is discounted;
* ``wco`` (worst-case optimisation): the lowest member's score.

Members are trained separately (their own LoRA and score head, a seed and a bootstrap resample of the
pairs each) and scored on their own scale, so every member's score is first standardised by the mean
and standard deviation of its scores on the held-out answers; otherwise a member with a wider scale
would dominate the mean and decide the minimum.

An ensemble is a reward folder holding ``ensemble.json`` and one sub-folder per member; each member is
a plain reward run (a PEFT adapter with its score head) that PEFT or TRL users load on its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlhf_core.errors import ConfigError

MANIFEST = "ensemble.json"
AGGREGATIONS = ("mean", "uwo", "wco")


@dataclass(frozen=True)
class Member:
    """One reward model of an ensemble: its folder and the scale its scores are standardised by."""

    path: str  # a reward run folder (absolute, or relative to the ensemble folder in the manifest)
    mean: float = 0.0
    std: float = 1.0


def write_manifest(folder: str | Path, members: list[Member]) -> Path:
    """``ensemble.json`` in ``folder``: the members' sub-folders (relative) and their scales."""
    folder = Path(folder)
    listed = [asdict(m) | {"path": str(Path(m.path).relative_to(folder))} for m in members]
    path = folder / MANIFEST
    path.write_text(json.dumps({"members": listed}, indent=2) + "\n")
    return path


def members(reward_dir: str | Path) -> list[Member]:
    """The reward models a reward folder holds: its ensemble's members, or itself (unscaled) alone."""
    folder = Path(reward_dir)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return [Member(str(folder))]
    try:
        listed = json.loads(manifest.read_text())["members"]
        found = [Member(str(folder / m["path"]), float(m["mean"]), float(m["std"])) for m in listed]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{manifest}: not an ensemble manifest ({error})") from error
    if not found:
        raise ConfigError(f"{manifest}: lists no members")
    for member in found:
        if not Path(member.path).is_dir():
            raise ConfigError(f"{manifest}: member folder {member.path} is missing")
        if not member.std > 0:
            raise ConfigError(f"{manifest}: member {member.path} has scale std {member.std}; it must be > 0")
    return found


def standardise(scores: torch.Tensor, scales: list[Member]) -> torch.Tensor:
    """Each member's scores (K x B) on a common scale: ``(score - mean) / std`` per member."""
    mean = scores.new_tensor([m.mean for m in scales])[:, None]
    std = scores.new_tensor([m.std for m in scales])[:, None]
    return (scores - mean) / std


def aggregate(scores: torch.Tensor, how: str, uwo_coef: float = 1.0) -> torch.Tensor:
    """One reward per answer (B,) from the members' standardised scores (K x B): ``mean``, ``uwo`` or ``wco``.

    ``uwo``: mean - ``uwo_coef`` * variance across members (the population variance, 0 for one member);
    ``wco``: the minimum over members.
    """
    if how == "mean":
        return scores.mean(0)
    if how == "uwo":
        return scores.mean(0) - uwo_coef * scores.var(0, unbiased=False)
    if how == "wco":
        return scores.min(0).values
    raise ValueError(f"reward_aggregation: unknown {how!r} (use one of {', '.join(AGGREGATIONS)})")


def disagreement(scores: torch.Tensor) -> torch.Tensor:
    """How much the members disagree on each answer (B,): the standard deviation across them (0 for one)."""
    return scores.std(0, unbiased=False)
