"""Items: prompts and their candidate responses, added one by one or imported all or nothing, and their batches.

A prompt is stored once per external id (or per content when it has none), a candidate once per
text; an item's candidates are fixed from the moment an annotator holds or answers it. A batch is
one round of iterated RLHF: the prompts a selector chose for it (:func:`assign_batch`).
"""

from __future__ import annotations

import math
import numbers
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import records
from feedback import schema as t
from feedback.enums import AssignmentStatus
from feedback.store.common import MAX_INTEGER, canonical, checked_json, checked_text, sha256, utcnow
from feedback.store.errors import Conflict, Invalid, NotFound
from feedback.store.views import ImportReport

# Items an annotator holds or has answered: their candidate sets are fixed.
_IN_USE = sa.select(t.assignments.c.prompt_id).where(
    t.assignments.c.status.in_((AssignmentStatus.ASSIGNED, AssignmentStatus.SUBMITTED))
)


def lock_prompt(c: Connection, prompt_id: int) -> bool:
    """Serialise writers of one item on PostgreSQL (SQLite's write lock already does that).

    Returns whether the prompt exists.
    """
    locked = sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id).with_for_update()
    return c.execute(locked).first() is not None


def add_prompts(c: Connection, prompts: Iterable[Any], external_ids: Iterable[str | None] | None) -> list[int]:
    """Store prompts (text or chat messages); returns their ids. A prompt stored before keeps its id."""
    prompt_list = list(prompts)
    ids = list(external_ids) if external_ids is not None else [None] * len(prompt_list)
    if len(ids) != len(prompt_list):
        raise Invalid("add_prompts: as many external ids as prompts are needed")
    return [add_prompt(c, prompt, external)[0] for prompt, external in zip(prompt_list, ids, strict=True)]


def add_prompt(c: Connection, prompt: Any, external_id: str | None) -> tuple[int, bool]:
    """Store a prompt (text or chat messages); returns its id and whether it is new."""
    messages = checked_json(records.prompt_messages(prompt), "prompt")
    if external_id is not None:
        checked_text(external_id, "id")
    key = sha256(f"id:{external_id}" if external_id else f"messages:{canonical(messages)}")
    existing = c.execute(sa.select(t.prompts.c.id, t.prompts.c.messages).where(t.prompts.c.key == key)).first()
    if existing is not None:
        # The external id is the client's idempotency key: re-importing the same row is a no-op,
        # but the same id with other content is a mistake to report, not one to paper over by
        # returning the old prompt (its answers would be exported under the new text's id).
        if external_id and canonical(existing.messages) != canonical(messages):
            raise Conflict(
                f"id {external_id!r} is already used by prompt {existing.id} with a different prompt; "
                "give this prompt a new id (or leave the id out)"
            )
        return existing.id, False
    inserted = c.execute(
        sa.insert(t.prompts)
        .values(key=key, external_id=external_id, messages=messages, created_at=utcnow())
        .returning(t.prompts.c.id)
    ).scalar_one()
    return inserted, True


def add_candidate(
    c: Connection,
    prompt_id: int,
    response: str | Mapping[str, Any],
    *,
    model: str | None = None,
    adapter: str | None = None,
    generation: Mapping[str, Any] | None = None,
    langsmith_project: str | None = None,
) -> tuple[int, bool]:
    """Store a response to a prompt; returns its id and whether it is new.

    A response is text, or a mapping with ``text`` and optionally ``model``, ``adapter``,
    ``generation``, ``run_id`` and ``session_id`` (its LangSmith run and project), which
    override the keyword arguments. With ``langsmith_project``, a new response without a run
    gets a run id now and a row in ``pending_runs``: the sync creates the run in that project
    (:func:`feedback.store.outbox.pending_runs`), so a LangSmith outage only delays it.
    """
    if langsmith_project is not None and not 1 <= len(checked_text(langsmith_project, "langsmith project")) <= 200:
        raise Invalid("langsmith project: 1 to 200 characters")
    spec: dict[str, Any] = {"text": response} if isinstance(response, str) else dict(response)
    text = spec.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Invalid(f"prompt {prompt_id}: a response must be non-empty text")
    generation = spec.get("generation", generation)
    fields = {"model": spec.get("model", model), "adapter": spec.get("adapter", adapter), "generation": generation}
    checked_json(
        {**fields, "text": text, "run_id": spec.get("run_id"), "session_id": spec.get("session_id")},
        f"prompt {prompt_id}: response",
    )
    # Locked on PostgreSQL (as next_item and submit do), so no item is handed out or answered
    # between the check below and the insert.
    if not lock_prompt(c, prompt_id):
        raise NotFound(f"no prompt {prompt_id}")
    text_hash = sha256(text)
    existing = c.execute(
        sa.select(t.candidates.c.id).where(t.candidates.c.prompt_id == prompt_id, t.candidates.c.text_hash == text_hash)
    ).scalar()
    if existing is not None:
        return existing, False
    if _in_use(c, prompt_id):
        # A ranking covers every candidate the annotator saw: a candidate added afterwards
        # would be unranked in the stored rankings (and an open ranking could not be submitted).
        raise Conflict(f"prompt {prompt_id} was already handed out or answered; its candidates cannot change any more")
    run_id = spec.get("run_id") or (uuid.uuid4() if langsmith_project else None)
    values = {
        **fields,
        "prompt_id": prompt_id,
        "text": text,
        "text_hash": text_hash,
        "generation": dict(generation) if generation is not None else None,
        "langsmith_run_id": str(run_id) if run_id else None,
        "langsmith_session_id": str(spec["session_id"]) if spec.get("session_id") else None,
        "created_at": utcnow(),
    }
    inserted: int = c.execute(sa.insert(t.candidates).values(**values).returning(t.candidates.c.id)).scalar_one()
    if langsmith_project and not spec.get("run_id"):
        c.execute(sa.insert(t.pending_runs).values(candidate_id=inserted, project=langsmith_project, attempts=0))
    return inserted, True


def _in_use(c: Connection, prompt_id: int) -> bool:
    """Whether an annotator has answered this item or holds it."""
    return c.execute(_IN_USE.where(t.assignments.c.prompt_id == prompt_id).limit(1)).first() is not None


def prompts_in_use(c: Connection) -> set[int]:
    """Prompts handed out or answered: ``rlhf feedback generate`` leaves them alone."""
    return set(c.execute(_IN_USE.distinct()).scalars())


def import_items(c: Connection, rows: Iterable[Mapping[str, Any]]) -> ImportReport:
    """Store validated import rows ``{"prompt", "id"?, "candidates"?: [text | {...}]}``.

    All or nothing (the caller's one transaction): a row that fails leaves the store as it was.
    Validation (with file, line and field in the messages) is :func:`feedback.importer.validate_rows`' job.
    """
    report = ImportReport()
    for row in rows:
        prompt_id, added = add_prompt(c, row["prompt"], row.get("id"))
        report.prompt_ids.append(prompt_id)
        report.prompts_added += added
        report.prompts_existing += not added
        for candidate in row.get("candidates") or []:
            _, new = add_candidate(c, prompt_id, candidate)
            report.candidates_added += new
            report.candidates_existing += not new
    return report


def prompts(c: Connection) -> list[tuple[int, records.Messages]]:
    """Every prompt as (id, messages), in id order."""
    rows = c.execute(sa.select(t.prompts.c.id, t.prompts.c.messages).order_by(t.prompts.c.id))
    return [(row.id, row.messages) for row in rows]


SELECTOR_LENGTH = 32  # characters of ``prompts.selected_by``


def _selection_scores(scores: Sequence[float | None] | None, count: int) -> list[float | None]:
    """One finite score (or None) per prompt: a NaN or infinite score would make every mean of the batch meaningless."""
    if scores is None:
        return [None] * count
    values = list(scores)
    if len(values) != count:
        raise Invalid(f"assign_batch: {len(values)} scores for {count} prompts; give one score (or None) per prompt")
    checked: list[float | None] = []
    for index, score in enumerate(values):
        if score is None:
            checked.append(None)
            continue
        if not isinstance(score, numbers.Real) or isinstance(score, bool) or not math.isfinite(score):
            raise Invalid(f"assign_batch: score {index} must be a finite number or None, got {score!r}")
        checked.append(float(score))
    return checked


def assign_batch(
    c: Connection, prompt_ids: Sequence[int], batch: int, selected_by: str, scores: Sequence[float | None] | None
) -> int:
    """Put prompts into annotation batch ``batch`` (a round, from 1), as chosen by ``selected_by`` with ``scores``.

    Only prompts without a batch are changed: a prompt keeps the first batch it was put in (its
    answers belong to the round that asked for them), so a round re-run after a crash changes
    nothing. A prompt listed twice (two equal prompts in a selector's pool are one stored prompt)
    is put in once, with its first score. Returns how many prompts this call put into the batch.

    Everything is checked before anything is written; an unknown prompt id is :class:`NotFound`
    and changes nothing either. The rows are locked in id order on PostgreSQL (SQLite's write lock
    serialises writers), so two concurrent calls cannot both count the same prompt.
    """
    ids = list(prompt_ids)
    for prompt_id in ids:
        if not isinstance(prompt_id, int) or isinstance(prompt_id, bool):
            raise Invalid(f"assign_batch: prompt ids are whole numbers, got {prompt_id!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_INTEGER:
        raise Invalid(f"assign_batch: batch is a round number, a whole number from 1 to {MAX_INTEGER}; got {batch!r}")
    if not isinstance(selected_by, str):
        raise Invalid(f"assign_batch: selected_by names the selector as text, got {selected_by!r}")
    selector = checked_text(selected_by, "selected_by").strip()
    if not 1 <= len(selector) <= SELECTOR_LENGTH:
        raise Invalid(f"assign_batch: selected_by must be 1 to {SELECTOR_LENGTH} characters, got {selected_by!r}")
    checked_scores = _selection_scores(scores, len(ids))
    if not ids:
        return 0
    rows = c.execute(
        sa.select(t.prompts.c.id, t.prompts.c.batch)
        .where(t.prompts.c.id.in_(ids))
        .order_by(t.prompts.c.id)
        .with_for_update()
    ).all()
    missing = sorted(set(ids) - {row.id for row in rows})
    if missing:
        raise NotFound(f"assign_batch: no prompt(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    unbatched = {row.id for row in rows if row.batch is None}
    first_scores: dict[int, float | None] = {}
    for prompt_id, score in zip(ids, checked_scores, strict=True):
        if prompt_id in unbatched:
            first_scores.setdefault(prompt_id, score)
    if first_scores:
        c.execute(
            sa.update(t.prompts)
            .where(t.prompts.c.id == sa.bindparam("prompt_id"))
            .values(batch=batch, selected_by=selector, selection_score=sa.bindparam("score")),
            [{"prompt_id": prompt_id, "score": score} for prompt_id, score in first_scores.items()],
        )
    return len(first_scores)
