"""Plain in-memory records of the annotations, shared by the export and the agreement statistics.

The store reads its tables into these frozen dataclasses (:meth:`feedback.store.Store.records`);
everything downstream of it (pairs, KTO and SFT rows, Krippendorff's alpha) is a pure function of
them, so it is tested on hand-written records with no database and no server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Candidate:
    """One model response to a prompt."""

    id: int
    text: str
    model: str | None = None


@dataclass(frozen=True)
class Answer:
    """One annotator's answer to one prompt (an "item").

    ``thumbs`` maps candidate id to ``True`` (up) or ``False`` (down) for the responses the
    annotator rated; ``ranks`` maps every candidate of the prompt to its rank (1 is best, equal
    ranks are ties) when the annotator ranked them. A correction is a better response written by
    the annotator, optionally as an edit of one candidate.
    """

    annotator: str
    thumbs: dict[int, bool] = field(default_factory=dict)
    ranks: dict[int, int] = field(default_factory=dict)
    comment: str | None = None
    correction: str | None = None
    corrected_candidate_id: int | None = None


@dataclass(frozen=True)
class Item:
    """A prompt with its candidates and every annotator's answer to it.

    ``batch``, ``selected_by`` and ``selection_score`` say which round of iterated RLHF put the
    prompt up for annotation, which selector chose it and with what score (all None for a prompt
    outside the rounds); the export carries them into every row, so training can weigh or compare rounds.
    """

    prompt_id: int
    messages: Messages
    candidates: tuple[Candidate, ...]
    answers: tuple[Answer, ...] = ()
    batch: int | None = None
    selected_by: str | None = None
    selection_score: float | None = None

    def candidate(self, candidate_id: int) -> Candidate:
        return next(c for c in self.candidates if c.id == candidate_id)


def batch_order(batch: int | None) -> tuple[bool, int]:
    """Sort key of batches wherever they are listed: rounds in order, the prompts outside the rounds last."""
    return batch is None, batch or 0


def prompt_messages(prompt: Any) -> Messages:
    """A prompt as chat messages: plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
