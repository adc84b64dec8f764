"""The LangSmith outbox: answers whose latest revision has not reached LangSmith, and their send state.

An answer is committed first (that is the annotator's acknowledgement) and sent later by
:mod:`feedback.langsmith_sync`; ``submissions.revision`` against ``synced_revision`` says what is
still to send, ``sync_attempts`` / ``sync_after`` / ``sync_error`` pace the retries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.store.answers import content, values
from feedback.store.views import SyncJob, SyncStatus


def _with_runs() -> Any:
    return sa.exists().where(
        t.candidates.c.prompt_id == t.submissions.c.prompt_id, t.candidates.c.langsmith_run_id.is_not(None)
    )


def _unsynced() -> Any:
    return sa.and_(
        _with_runs(),
        sa.or_(t.submissions.c.synced_revision.is_(None), t.submissions.c.synced_revision < t.submissions.c.revision),
    )


def pending_sync(c: Connection, limit: int, now: dt.datetime) -> list[SyncJob]:
    """Submissions on candidates with LangSmith runs whose latest revision is not in LangSmith yet."""
    rows = c.execute(
        sa.select(t.submissions, t.annotators.c.name.label("annotator"))
        .join(t.annotators, t.annotators.c.id == t.submissions.c.annotator_id)
        .where(_unsynced(), sa.or_(t.submissions.c.sync_after.is_(None), t.submissions.c.sync_after <= now))
        .order_by(t.submissions.c.updated_at)
        .limit(limit)
    ).all()
    thumbs, ranks = values(c, [r.id for r in rows])
    prompt_ids = {r.prompt_id for r in rows}
    runs: dict[int, dict[int, tuple[str, str | None]]] = {p: {} for p in prompt_ids}
    if prompt_ids:
        for cand in c.execute(
            sa.select(t.candidates).where(
                t.candidates.c.prompt_id.in_(prompt_ids), t.candidates.c.langsmith_run_id.is_not(None)
            )
        ):
            runs[cand.prompt_id][cand.id] = (cand.langsmith_run_id, cand.langsmith_session_id)
    return [
        SyncJob(
            **asdict(content(r, thumbs[r.id], ranks[r.id])),
            submission_id=r.id,
            revision=r.revision,
            annotator=r.annotator,
            annotator_id=r.annotator_id,
            prompt_id=r.prompt_id,
            runs=runs[r.prompt_id],
            attempts=r.sync_attempts,
            first_sync=r.synced_revision is None,
        )
        for r in rows
    ]


def mark_synced(c: Connection, submission_id: str, revision: int) -> None:
    """Record that ``revision`` reached LangSmith (never moves back: a slow older pass cannot undo a newer one)."""
    c.execute(
        sa.update(t.submissions)
        .where(
            t.submissions.c.id == submission_id,
            sa.or_(t.submissions.c.synced_revision.is_(None), t.submissions.c.synced_revision < revision),
        )
        .values(synced_revision=revision, sync_error=None, sync_attempts=0, sync_after=None)
    )


def mark_sync_failed(c: Connection, submission_id: str, error: str, retry_at: dt.datetime) -> None:
    c.execute(
        sa.update(t.submissions)
        .where(t.submissions.c.id == submission_id)
        .values(sync_error=error[:2000], sync_attempts=t.submissions.c.sync_attempts + 1, sync_after=retry_at)
    )


def _count(c: Connection, *where: Any) -> int:
    counted: int = c.execute(sa.select(sa.func.count()).select_from(t.submissions).where(*where)).scalar_one()
    return counted


def sync_status(c: Connection) -> SyncStatus:
    last_error = c.execute(
        sa.select(t.submissions.c.sync_error)
        .where(t.submissions.c.sync_error.is_not(None))
        .order_by(t.submissions.c.updated_at.desc())
        .limit(1)
    ).scalar()
    return SyncStatus(
        pending=_count(c, _unsynced()),
        failing=_count(c, _unsynced(), t.submissions.c.sync_attempts > 0),
        synced=_count(c, t.submissions.c.synced_revision.is_not(None)),
        last_error=last_error,
    )
