"""The queue: which item an annotator gets next, leases that expire, skips, and who holds what.

An assignment is one annotator's hold on one item (:class:`feedback.enums.AssignmentStatus`):
``assigned`` (a lease, counted for ``lease_minutes``), ``submitted`` or ``skipped``. An item is
open to an annotator while fewer than ``overlap`` assignments occupy it.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import AssignmentStatus, Mode
from feedback.store import settings
from feedback.store.common import utcnow
from feedback.store.errors import Conflict, Forbidden, NotFound
from feedback.store.views import ItemView, Settings


def shuffled_for(annotator_id: int, prompt_id: int, items: list[Any]) -> list[Any]:
    """A per-annotator, per-item random order that stays the same on reload (position bias control)."""
    out = list(items)
    random.Random(f"{annotator_id}:{prompt_id}").shuffle(out)
    return out


def lease_cutoff(current: Settings, now: dt.datetime | None = None) -> dt.datetime:
    """Assignments handed out before this have lapsed: their slots are free again."""
    return (now or utcnow()) - dt.timedelta(minutes=current.lease_minutes)


def _taken(cutoff: dt.datetime) -> Any:
    """Assignments that occupy one of an item's ``overlap`` slots: answered, or handed out recently."""
    return sa.or_(
        t.assignments.c.status == AssignmentStatus.SUBMITTED,
        sa.and_(t.assignments.c.status == AssignmentStatus.ASSIGNED, t.assignments.c.assigned_at > cutoff),
    )


def _slots_taken(c: Connection, prompt_id: int, cutoff: dt.datetime, exclude: int) -> int:
    taken: int = c.execute(
        sa.select(sa.func.count())
        .select_from(t.assignments)
        .where(t.assignments.c.prompt_id == prompt_id, t.assignments.c.annotator_id != exclude, _taken(cutoff))
    ).scalar_one()
    return taken


def open_prompts(annotator_id: int, current: Settings, cutoff: dt.datetime) -> Any:
    """Prompts this annotator may still get: enough candidates, not seen by them, a free slot.

    Written as three uncorrelated ``IN`` sets (each computed once per query) rather than per-prompt
    subqueries: the queue and each annotator's progress count run on every item handed out, and a
    per-prompt count over a growing store made them the server's largest cost under load.
    """
    minimum = 2 if current.mode == Mode.RANKING else 1
    rankable = sa.select(t.candidates.c.prompt_id).group_by(t.candidates.c.prompt_id).having(sa.func.count() >= minimum)
    seen = sa.select(t.assignments.c.prompt_id).where(t.assignments.c.annotator_id == annotator_id)
    full = (
        sa.select(t.assignments.c.prompt_id)
        .where(_taken(cutoff))
        .group_by(t.assignments.c.prompt_id)
        .having(sa.func.count() >= current.overlap)
    )
    return sa.and_(t.prompts.c.id.in_(rankable), t.prompts.c.id.not_in(seen), t.prompts.c.id.not_in(full))


def next_item(c: Connection, annotator_id: int, current: Settings | None = None) -> ItemView | None:
    """The item this annotator should answer next (the one handed out before, if still open), or None.

    Items are handed out in id order, so each is completed by ``overlap`` annotators before
    the next starts: finished items leave the queue early. The hand-out is a row lock
    (PostgreSQL) or the write lock (SQLite), so two annotators never take the last slot twice.
    """
    current = current or settings.read(c)
    now = utcnow()
    cutoff = lease_cutoff(current, now)
    held = c.execute(
        sa.select(t.assignments.c.prompt_id)
        .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.status == AssignmentStatus.ASSIGNED)
        .order_by(t.assignments.c.assigned_at)
    ).scalars()
    for prompt_id in held:
        if _slots_taken(c, prompt_id, cutoff, exclude=annotator_id) < current.overlap:
            c.execute(
                sa.update(t.assignments)
                .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.prompt_id == prompt_id)
                .values(assigned_at=now, updated_at=now)
            )
            return item_view(c, annotator_id, prompt_id, current)
    first_open = sa.select(t.prompts.c.id).where(open_prompts(annotator_id, current, cutoff)).order_by(t.prompts.c.id)
    locking = c.dialect.name == "postgresql"  # SQLite: the write lock already serialises hand-outs
    for _ in range(20):  # retry when another annotator took the last slot first (PostgreSQL)
        if locking:
            # The first open item whose row no other hand-out or answer holds right now, locked:
            # concurrent annotators spread over the next items instead of queueing on one row lock.
            # Only when every open item is held this instant, wait for the first of them: a held
            # item may still have a free slot once its holder commits (an empty queue is final).
            prompt_id = c.execute(first_open.with_for_update(of=t.prompts, skip_locked=True).limit(1)).scalar()
            if prompt_id is None:
                prompt_id = c.execute(first_open.with_for_update(of=t.prompts).limit(1)).scalar()
        else:
            prompt_id = c.execute(first_open.limit(1)).scalar()
        if prompt_id is None:
            return None
        if locking and _slots_taken(c, prompt_id, cutoff, exclude=annotator_id) >= current.overlap:
            continue  # filled between the snapshot the query saw and the lock
        set_assignment(c, annotator_id, prompt_id, AssignmentStatus.ASSIGNED, exists=False, now=now)
        return item_view(c, annotator_id, prompt_id, current)
    return None


def held_item(c: Connection, annotator_id: int, prompt_id: int) -> ItemView:
    """An item handed to this annotator (to revisit it)."""
    if assignment(c, annotator_id, prompt_id) is None:
        raise NotFound(f"prompt {prompt_id} is not among your items")
    return item_view(c, annotator_id, prompt_id, settings.read(c))


def assignment(c: Connection, annotator_id: int, prompt_id: int) -> AssignmentStatus | None:
    """Where this item stands for this annotator (None: never handed to them)."""
    status = c.execute(
        sa.select(t.assignments.c.status).where(
            t.assignments.c.annotator_id == annotator_id, t.assignments.c.prompt_id == prompt_id
        )
    ).scalar()
    return AssignmentStatus(status) if status is not None else None


def item_view(c: Connection, annotator_id: int, prompt_id: int, current: Settings) -> ItemView:
    prompt = c.execute(sa.select(t.prompts.c.messages, t.prompts.c.batch).where(t.prompts.c.id == prompt_id)).first()
    if prompt is None:
        raise NotFound(f"no prompt {prompt_id}")
    rows = c.execute(
        sa.select(t.candidates.c.id, t.candidates.c.text)
        .where(t.candidates.c.prompt_id == prompt_id)
        .order_by(t.candidates.c.id)
    ).all()
    candidates = shuffled_for(annotator_id, prompt_id, [{"id": r.id, "text": r.text} for r in rows])
    return ItemView(
        prompt_id=prompt_id, messages=prompt.messages, candidates=candidates, mode=current.mode, batch=prompt.batch
    )


def not_handed_out(prompt_id: int) -> Forbidden:
    """The refusal of an item not handed to the annotator, the same whether it exists or not (nothing to probe)."""
    return Forbidden(f"prompt {prompt_id} was not handed to you; get items from the queue")


def skip(c: Connection, annotator_id: int, prompt_id: int, require_assignment: bool = False) -> None:
    """Discard an item for this annotator: it is not offered to them again and frees its slot.

    With ``require_assignment`` (the web app) only an item handed to them can be skipped; another,
    existing or not, gets the same :func:`not_handed_out` refusal, checked first, as an answer to it would.
    """
    status = assignment(c, annotator_id, prompt_id)
    if require_assignment and status is None:
        raise not_handed_out(prompt_id)
    if c.execute(sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id)).scalar() is None:
        raise NotFound(f"no prompt {prompt_id}")
    if status == AssignmentStatus.SUBMITTED:
        raise Conflict(f"prompt {prompt_id}: already answered; edit the answer instead")
    set_assignment(c, annotator_id, prompt_id, AssignmentStatus.SKIPPED, exists=status is not None)


def set_assignment(
    c: Connection,
    annotator_id: int,
    prompt_id: int,
    status: AssignmentStatus,
    *,
    exists: bool,
    now: dt.datetime | None = None,
) -> None:
    now = now or utcnow()
    if exists:
        c.execute(
            sa.update(t.assignments)
            .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.prompt_id == prompt_id)
            .values(status=status, updated_at=now)
        )
    else:
        c.execute(
            sa.insert(t.assignments).values(
                annotator_id=annotator_id, prompt_id=prompt_id, status=status, assigned_at=now, updated_at=now
            )
        )
