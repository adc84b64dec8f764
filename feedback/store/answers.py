"""Answers: submitting once per client id, compare-and-set edits, and reading an annotator's own answers.

Submissions are idempotent: the client supplies the id, a retry with the same id and body
returns the first receipt (``created=False``), the same id with another body is a conflict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import AssignmentStatus, Mode
from feedback.store import settings
from feedback.store.common import MAX_TEXT, aware, canonical, checked_text, sha256, utcnow
from feedback.store.errors import Conflict, Invalid, NotFound
from feedback.store.items import lock_prompt
from feedback.store.queue import assignment, not_handed_out, set_assignment
from feedback.store.views import AnswerContent, AnswerView, Receipt


def body_hash(prompt_id: int, answer: AnswerContent) -> str:
    """The answer's fingerprint: a retry under the same client id must carry the same one."""
    body = {**asdict(answer), "prompt_id": prompt_id}
    body["thumbs"] = sorted(answer.thumbs.items())
    body["ranks"] = sorted(answer.ranks.items())
    return sha256(canonical(body))


def dense_ranks(ranks: Mapping[int, float]) -> dict[int, int]:
    """Ranks renumbered 1, 2, ... keeping order and ties: (1, 1, 3) and (1, 1, 2) mean the same ranking."""
    levels = {value: index + 1 for index, value in enumerate(sorted(set(ranks.values())))}
    return {candidate: levels[value] for candidate, value in ranks.items()}


def _normalise_text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name}: expected text")
    if len(value) > MAX_TEXT:
        raise Invalid(f"{name}: {len(value)} characters, at most {MAX_TEXT}")
    checked_text(value, name)
    return value if value.strip() else None


def _contradiction(thumbs: Mapping[int, bool], ranks: Mapping[int, int]) -> str | None:
    """A ranking and thumbs that disagree: a thumbs-down response ranked above a thumbs-up one."""
    for down in sorted(k for k, up in thumbs.items() if not up and k in ranks):
        for up in sorted(k for k, v in thumbs.items() if v and k in ranks):
            if ranks[down] < ranks[up]:
                return (
                    f"thumbs contradict the ranking: candidate {down} is ranked above candidate {up} "
                    "but has thumbs down while the other has thumbs up"
                )
    return None


def _mode_problem(mode: Mode, thumbs: Mapping[int, bool], ranks: Mapping[int, int], candidates: set[int]) -> str | None:
    """What the annotation page of ``mode`` requires and the answer lacks (the API holds clients to the page)."""
    if mode == Mode.RANKING and not ranks:
        return "the project is in ranking mode: rank every response"
    missing = sorted(candidates - set(thumbs))
    if mode == Mode.THUMBS and missing:
        return f"the project is in thumbs mode: give every response a thumb; candidate(s) {missing} have none"
    return None


def validated(c: Connection, prompt_id: int, sent: AnswerContent, mode: Mode | None = None) -> AnswerContent:
    """The answer checked against its item (and, given a ``mode``, against what that mode's page asks) and
    normalised (dense ranks, empty text as None)."""
    if c.execute(sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id)).scalar() is None:
        raise NotFound(f"no prompt {prompt_id}")
    candidate_ids = set(c.execute(sa.select(t.candidates.c.id).where(t.candidates.c.prompt_id == prompt_id)).scalars())
    thumbs = {int(k): bool(v) for k, v in sent.thumbs.items()}
    ranks = {int(k): int(v) for k, v in sent.ranks.items()}
    comment = _normalise_text(sent.comment, "comment")
    correction = _normalise_text(sent.correction, "correction")
    corrected_candidate_id = sent.corrected_candidate_id
    if not thumbs and not ranks and correction is None:
        raise Invalid("an answer needs thumbs, a ranking or a corrected response")
    for name, given in (("thumbs", thumbs), ("ranking", ranks)):
        strangers = sorted(set(given) - candidate_ids)
        if strangers:
            raise Invalid(f"{name}: candidate(s) {strangers} are not responses to prompt {prompt_id}")
    if ranks:
        missing = sorted(candidate_ids - set(ranks))
        if missing:
            raise Invalid(f"ranking: every response must be ranked; candidate(s) {missing} have no rank")
        if any(not 1 <= r <= len(candidate_ids) for r in ranks.values()):
            raise Invalid(f"ranking: ranks go from 1 (best) to {len(candidate_ids)}")
        ranks = dense_ranks(ranks)
    problem = _contradiction(thumbs, ranks) or (_mode_problem(mode, thumbs, ranks, candidate_ids) if mode else None)
    if problem:
        raise Invalid(problem)
    if corrected_candidate_id is not None and corrected_candidate_id not in candidate_ids:
        raise Invalid(f"corrected_candidate_id: {corrected_candidate_id} is not a response to prompt {prompt_id}")
    if corrected_candidate_id is not None and correction is None:
        raise Invalid("corrected_candidate_id given without a correction")
    return AnswerContent(thumbs, ranks, comment, correction, corrected_candidate_id)


def _submission(c: Connection, submission_id: str) -> Any:
    checked_text(submission_id, "answer id")
    return c.execute(sa.select(t.submissions).where(t.submissions.c.id == submission_id)).first()


HELD = (AssignmentStatus.ASSIGNED, AssignmentStatus.SUBMITTED)


def submit(
    c: Connection,
    annotator_id: int,
    prompt_id: int,
    client_id: str,
    sent: AnswerContent,
    require_assignment: bool,
    enforce_mode: bool,
) -> Receipt:
    """Record an annotator's answer to an item, exactly once per ``client_id``.

    A retry (same id, same body) returns the stored receipt with ``created=False``; the same id with
    a different body, or a second answer to the same item under a new id, is a :class:`Conflict`
    (answers are changed with :func:`edit`). With ``require_assignment`` (the web app) only items
    handed to the annotator by :func:`feedback.store.queue.next_item` can be answered, and that is
    checked first: the answer to an item not handed to you is refused without a word about the item
    (its existence, its candidates). With ``enforce_mode`` (the web app) the answer must be what the
    project's mode asks for (:func:`_mode_problem`). A concurrent request that commits first makes
    the insert fail on a key: the caller then answers with :func:`replay_after_race`.
    """
    client_id = checked_text(str(client_id), "client_id")
    if not 8 <= len(client_id) <= 64:
        raise Invalid("client_id: 8 to 64 characters (a UUID is a good choice)")
    if require_assignment and assignment(c, annotator_id, prompt_id) not in HELD:
        raise not_handed_out(prompt_id)
    body = validated(c, prompt_id, sent, settings.read(c).mode if enforce_mode else None)
    lock_prompt(c, prompt_id)  # before any read below: they then see the winner's commit
    fingerprint = body_hash(prompt_id, body)
    existing = _submission(c, client_id)
    if existing is not None:
        return _replay(existing, annotator_id, prompt_id, fingerprint)
    status = assignment(c, annotator_id, prompt_id)
    other = c.execute(
        sa.select(t.submissions.c.id).where(
            t.submissions.c.annotator_id == annotator_id, t.submissions.c.prompt_id == prompt_id
        )
    ).scalar()
    if other == client_id:  # a concurrent retry committed since the first look (READ COMMITTED)
        return _replay(_submission(c, client_id), annotator_id, prompt_id, fingerprint)
    if other is not None:
        raise Conflict(f"prompt {prompt_id}: already answered (answer {other}); edit that answer instead")
    _check_room(c, prompt_id, status)
    now = utcnow()
    c.execute(
        sa.insert(t.submissions).values(
            id=client_id,
            annotator_id=annotator_id,
            prompt_id=prompt_id,
            body_hash=fingerprint,
            comment=body.comment,
            correction=body.correction,
            corrected_candidate_id=body.corrected_candidate_id,
            created_at=now,
            updated_at=now,
            revision=1,
            sync_attempts=0,
        )
    )
    _write_values(c, client_id, body)
    set_assignment(c, annotator_id, prompt_id, AssignmentStatus.SUBMITTED, exists=status is not None)
    return Receipt(client_id, prompt_id, created=True, revision=1)


def replay_after_race(c: Connection, annotator_id: int, prompt_id: int, client_id: str, sent: AnswerContent) -> Receipt:
    """The receipt after :func:`submit` lost a race on a key (in a fresh transaction).

    A concurrent request committed first (PostgreSQL; SQLite serialises writers): either a
    retry with the same id, or another answer by this annotator to the same item.
    """
    existing = _submission(c, client_id)
    if existing is None:
        raise Conflict(f"prompt {prompt_id}: already answered; edit that answer instead")
    return _replay(existing, annotator_id, prompt_id, body_hash(prompt_id, validated(c, prompt_id, sent)))


def _check_room(c: Connection, prompt_id: int, status: AssignmentStatus | None) -> None:
    """Refuse a new answer to an item that already has ``overlap`` answers (nothing is recorded).

    This is the late submit: an annotator's lease ran out (tab left open), the slot went to
    someone else and the item was completed by ``overlap`` other annotators. Accepting the
    answer would overfill the item. The caller holds the prompt's lock (:func:`lock_prompt`,
    as :func:`feedback.store.queue.next_item` does), so two late answers cannot both see one free slot.
    """
    overlap = settings.read(c).overlap
    answered = c.execute(
        sa.select(sa.func.count()).select_from(t.submissions).where(t.submissions.c.prompt_id == prompt_id)
    ).scalar_one()
    if answered < overlap:
        return
    if status == AssignmentStatus.ASSIGNED:
        raise Conflict(
            f"prompt {prompt_id}: your hold on this item expired and {answered} other annotator(s) "
            f"completed it meanwhile (overlap {overlap}); your answer was not recorded, take the next item"
        )
    raise Conflict(
        f"prompt {prompt_id}: the item is complete ({answered} answers, overlap {overlap}); "
        "your answer was not recorded"
    )


def _replay(existing: Any, annotator_id: int, prompt_id: int, fingerprint: str) -> Receipt:
    if existing.annotator_id != annotator_id or existing.prompt_id != prompt_id or existing.body_hash != fingerprint:
        raise Conflict(f"client_id {existing.id!r} was already used for a different answer; use a new id")
    return Receipt(existing.id, existing.prompt_id, created=False, revision=existing.revision)


def _write_values(c: Connection, submission_id: str, body: AnswerContent) -> None:
    c.execute(sa.delete(t.ratings).where(t.ratings.c.submission_id == submission_id))
    c.execute(sa.delete(t.ranks).where(t.ranks.c.submission_id == submission_id))
    if body.thumbs:
        c.execute(
            sa.insert(t.ratings),
            [{"submission_id": submission_id, "candidate_id": k, "up": v} for k, v in body.thumbs.items()],
        )
    if body.ranks:
        c.execute(
            sa.insert(t.ranks),
            [{"submission_id": submission_id, "candidate_id": k, "rank": v} for k, v in body.ranks.items()],
        )


def _own(c: Connection, annotator_id: int, submission_id: str) -> Any:
    row = _submission(c, submission_id)
    if row is None or row.annotator_id != annotator_id:
        # Another annotator's answer is reported as missing: its existence is not theirs to know.
        raise NotFound(f"you have no answer {submission_id!r}")
    return row


def edit(
    c: Connection,
    annotator_id: int,
    submission_id: str,
    sent: AnswerContent,
    expected_revision: int | None,
    enforce_mode: bool,
) -> Receipt:
    """Replace an annotator's own answer. Repeating the same edit changes nothing (no new revision).

    An edit is compare-and-set on the answer's revision: ``expected_revision`` is the revision the
    client based its change on (the page sends the one it loaded), and the UPDATE only applies
    while the stored revision is still the one read here. Two concurrent edits from the same
    base therefore cannot both succeed: on PostgreSQL the second UPDATE waits for the first's
    row lock, then matches no row; on SQLite writers are serialised and the second sees the new
    revision. The loser gets a :class:`Conflict` (409) instead of silently overwriting.
    ``enforce_mode`` holds the new answer to the project's mode, as :func:`submit` does.
    """
    row = _own(c, annotator_id, submission_id)
    if expected_revision is not None and expected_revision != row.revision:
        raise Conflict(_stale(submission_id, expected_revision, row.revision))
    body = validated(c, row.prompt_id, sent, settings.read(c).mode if enforce_mode else None)
    if body_hash(row.prompt_id, stored(c, row)) == body_hash(row.prompt_id, body):
        return Receipt(row.id, row.prompt_id, created=False, revision=row.revision)
    revision = row.revision + 1
    updated = c.execute(
        sa.update(t.submissions)
        .where(t.submissions.c.id == submission_id, t.submissions.c.revision == row.revision)
        .values(
            comment=body.comment,
            correction=body.correction,
            corrected_candidate_id=body.corrected_candidate_id,
            updated_at=utcnow(),
            revision=revision,
            sync_after=None,
            sync_attempts=0,
        )
    )
    if updated.rowcount != 1:  # a concurrent edit committed since the read above
        current = c.execute(sa.select(t.submissions.c.revision).where(t.submissions.c.id == submission_id)).scalar()
        raise Conflict(_stale(submission_id, row.revision, current))
    _write_values(c, submission_id, body)
    return Receipt(row.id, row.prompt_id, created=False, revision=revision)


def _stale(submission_id: str, base: int, current: int | None) -> str:
    return (
        f"answer {submission_id!r} was changed meanwhile (your edit is based on revision {base}, "
        f"it is now at revision {current}); reload it and edit again"
    )


def values(c: Connection, submission_ids: list[str]) -> tuple[dict[str, dict[int, bool]], dict[str, dict[int, int]]]:
    """The thumbs and the ranks of these submissions, by submission id."""
    thumbs: dict[str, dict[int, bool]] = {s: {} for s in submission_ids}
    ranks: dict[str, dict[int, int]] = {s: {} for s in submission_ids}
    if submission_ids:
        for r in c.execute(sa.select(t.ratings).where(t.ratings.c.submission_id.in_(submission_ids))):
            thumbs[r.submission_id][r.candidate_id] = r.up
        for r in c.execute(sa.select(t.ranks).where(t.ranks.c.submission_id.in_(submission_ids))):
            ranks[r.submission_id][r.candidate_id] = r.rank
    return thumbs, ranks


def content(row: Any, thumbs: dict[int, bool], ranks: dict[int, int]) -> AnswerContent:
    """A submission row's answer, with its thumbs and ranks (from :func:`values`)."""
    return AnswerContent(thumbs, ranks, row.comment, row.correction, row.corrected_candidate_id)


def stored(c: Connection, row: Any) -> AnswerContent:
    thumbs, ranks = values(c, [row.id])
    return content(row, thumbs[row.id], ranks[row.id])


def _view(row: Any, answer: AnswerContent) -> AnswerView:
    return AnswerView(
        id=row.id,
        prompt_id=row.prompt_id,
        revision=row.revision,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        **asdict(answer),
    )


def answer(c: Connection, annotator_id: int, submission_id: str) -> AnswerView:
    """One of this annotator's answers (another annotator's is reported as not found)."""
    row = _own(c, annotator_id, submission_id)
    return _view(row, stored(c, row))


def answer_to(c: Connection, annotator_id: int, prompt_id: int) -> AnswerView | None:
    """This annotator's answer to an item, if they gave one."""
    row = c.execute(
        sa.select(t.submissions).where(
            t.submissions.c.annotator_id == annotator_id, t.submissions.c.prompt_id == prompt_id
        )
    ).first()
    return _view(row, stored(c, row)) if row is not None else None


def answers(c: Connection, annotator_id: int, limit: int, offset: int) -> list[AnswerView]:
    """This annotator's answers, newest first."""
    rows = c.execute(
        sa.select(t.submissions)
        .where(t.submissions.c.annotator_id == annotator_id)
        .order_by(t.submissions.c.created_at.desc(), t.submissions.c.id)
        .limit(limit)
        .offset(offset)
    ).all()
    thumbs, ranks = values(c, [r.id for r in rows])
    return [_view(r, content(r, thumbs[r.id], ranks[r.id])) for r in rows]
