"""The values the store returns: frozen dataclasses, never its rows or loose dicts.

The web app serialises them (``dataclasses.asdict``), the CLI prints them, the training side reads
their fields (``store.progress().items``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from feedback import records
from feedback.enums import Mode, Role


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    role: Role
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


@dataclass(frozen=True)
class Settings:
    overlap: int
    mode: Mode
    lease_minutes: int
    guidelines: str


@dataclass(frozen=True)
class ItemView:
    """What an annotator sees of an item: candidates in a per-annotator random order, no model names.

    ``batch`` is the item's round (None outside the rounds); its selector and score are left out on
    purpose: an annotator told that the reward model found an item hard would judge it differently.
    """

    prompt_id: int
    messages: records.Messages
    candidates: list[dict[str, Any]]  # [{"id": ..., "text": ...}]
    mode: Mode
    batch: int | None = None


@dataclass(frozen=True)
class AnswerContent:
    """What an answer says: thumbs and ranks by candidate id, a comment, a corrected response."""

    thumbs: dict[int, bool]
    ranks: dict[int, int]
    comment: str | None
    correction: str | None
    corrected_candidate_id: int | None


@dataclass(frozen=True)
class AnswerView(AnswerContent):
    """An annotator's own answer, as stored (for listing and editing)."""

    id: str
    prompt_id: int
    revision: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Receipt:
    """The acknowledgement of a submission: ``created`` is False when it was a retry of one already stored."""

    id: str
    prompt_id: int
    created: bool
    revision: int


@dataclass(frozen=True)
class SyncJob(AnswerContent):
    """One submission whose current revision has not reached LangSmith yet."""

    submission_id: str
    revision: int
    annotator: str
    annotator_id: int
    prompt_id: int
    runs: dict[int, tuple[str, str | None]]  # candidate id -> (run id, session id)
    attempts: int
    first_sync: bool


@dataclass(frozen=True)
class RunJob:
    """A generated candidate whose LangSmith run is still to create (``pending_runs``)."""

    candidate_id: int
    run_id: str
    project: str
    messages: records.Messages
    text: str
    model: str | None
    adapter: str | None
    generation: dict[str, Any] | None
    created_at: dt.datetime
    attempts: int


@dataclass(frozen=True)
class SyncStatus:
    """The LangSmith outbox: answers waiting (``failing`` of them retried after an error), answers sent,
    and runs of generated candidates still to create."""

    pending: int
    failing: int
    synced: int
    last_error: str | None
    runs_pending: int = 0


@dataclass(frozen=True)
class AnnotatorCount:
    """One annotator's line in :class:`Progress`."""

    name: str
    role: Role
    answers: int
    skipped: int


@dataclass(frozen=True)
class BatchProgress:
    """One annotation batch's line in :class:`Progress` (``batch`` None: the prompts outside the rounds).

    ``selected_by`` names the batch's selector (several, comma-separated, if one round mixed them);
    ``mean_selection_score`` averages the scores its prompts were chosen with (None without scores),
    so a round chosen for uncertainty can be told from a random one at a glance.
    """

    batch: int | None
    selected_by: str | None
    items: int
    complete: int
    answers: int
    mean_selection_score: float | None


@dataclass(frozen=True)
class Progress:
    """Items complete (``overlap`` answers), in progress, untouched; answers in all, per annotator and per batch."""

    overlap: int
    items: int
    complete: int
    in_progress: int
    untouched: int
    answers: int
    annotators: list[AnnotatorCount]
    batches: list[BatchProgress] = field(default_factory=list)


@dataclass(frozen=True)
class AnnotatorProgress:
    """One annotator's answers so far and the items still open to them."""

    answered: int
    remaining: int


@dataclass
class ImportReport:
    prompts_added: int = 0
    prompts_existing: int = 0
    candidates_added: int = 0
    candidates_existing: int = 0
    prompt_ids: list[int] = field(default_factory=list)
