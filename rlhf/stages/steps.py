"""What each step of ``rlhf pipeline`` records in its folder's ``done.json``, and typed views of it.

A finished step's ``done.json`` is ``{"stage", "seconds", ...its figures}``: the marker a re-run skips
the step by, and the figures ``rlhf pipeline`` returns and prints. The figures one module reads from
another module's step (a round's summary, :func:`rlhf.stages.rounds.finish`, reads what generate,
annotate and preferences recorded) are read through the types below (:func:`read`), so a renamed or
missing figure is a message naming the file, not a ``KeyError`` in the round's summary.

Torch-free, as :mod:`rlhf.results` is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rlhf.results import Result

DONE = "done.json"

StepT = TypeVar("StepT", bound=Result)


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def write(folder: Path, stage: str, seconds: float, figures: Mapping[str, Any]) -> dict[str, Any]:
    """Mark a step finished: its ``done.json``, returned as the record ``rlhf pipeline`` reports."""
    record = {"stage": stage, "seconds": seconds, **figures}
    (folder / DONE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def record(folder: Path) -> dict[str, Any]:
    """What a finished step wrote into its ``done.json`` (the figures ``rlhf pipeline`` returns)."""
    return dict(json.loads((folder / DONE).read_text()))


def read(kind: type[StepT], folder: Path) -> StepT:
    """A finished step's ``done.json`` as ``kind`` (figures it does not declare are left out)."""
    return kind.from_json(record(folder), str(folder / DONE))


@dataclass(frozen=True, kw_only=True)
class Step(Result):
    """Every step's record: which step, and how long it took."""

    seconds: float


@dataclass(frozen=True, kw_only=True)
class Batch:
    """A round's candidate sets in the store: how many, how they were chosen, out of how many."""

    items: int  # candidate sets put in the store in this round
    pool: int  # candidate sets the selector chose from (round 1: the items themselves)
    selected_by: str  # selection.FIRST_ROUND for round 1, else the selector


@dataclass(frozen=True, kw_only=True)
class SelectedBatch(Batch):
    """A later round's batch, with how sure the previous reward model was of the pool and of the choice."""

    mean_uncertainty_pool: float | None = None
    mean_uncertainty_selected: float | None = None
    reward_accuracy_on_policy: float | None = None  # the previous reward model on this pool, against the gold judge
    reward_accuracy_pairs: int = 0


@dataclass(frozen=True, kw_only=True)
class GenerateStep(SelectedBatch, Step):
    """The generate step of a multi-round run (round 1's has no uncertainty figures: no reward model yet)."""

    stage: str = "generate"


@dataclass(frozen=True)
class AnnotatedBatch:
    """The answers a round's batch collected."""

    round: int
    items: int
    answers: int


@dataclass(frozen=True, kw_only=True)
class AnnotateStep(Step):
    stage: str = "annotate"
    annotator: str  # simulated or human
    batch: AnnotatedBatch | None = None  # multi-round runs


@dataclass(frozen=True, kw_only=True)
class PreferencesStep(Step):
    stage: str = "preferences"
    rows: dict[str, int] = field(default_factory=dict)  # preference pairs per split
    answers: int = 0  # rankings they came from
    kto_rows: dict[str, int] = field(default_factory=dict)  # the same rankings as KTO thumbs, per split
