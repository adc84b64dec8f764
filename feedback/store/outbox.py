"""The LangSmith outbox: runs of generated candidates to create, answers whose latest revision has not
reached LangSmith, and their send state.

An answer is committed first (that is the annotator's acknowledgement) and sent later by
:mod:`feedback.langsmith_sync`; ``submissions.revision`` against ``synced_revision`` says what is
still to send, ``sync_attempts`` / ``sync_after`` / ``sync_error`` pace the retries. Runs to
create are rows of ``pending_runs`` (deleted once created); an answer on an item with such a row
waits, so its feedback never names a run LangSmith does not have yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.store.answers import content, values
from feedback.store.common import aware
from feedback.store.views import RunJob, SyncJob, SyncStatus


def _with_runs() -> Any:
    return sa.exists().where(
        t.candidates.c.prompt_id == t.submissions.c.prompt_id, t.candidates.c.langsmith_run_id.is_not(None)
    )


def _runs_pending() -> Any:
    return sa.exists().where(
        t.candidates.c.prompt_id == t.submissions.c.prompt_id, t.pending_runs.c.candidate_id == t.candidates.c.id
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
        .where(
            _unsynced(),
            ~_runs_pending(),
            sa.or_(t.submissions.c.sync_after.is_(None), t.submissions.c.sync_after <= now),
        )
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


def pending_runs(c: Connection, limit: int, now: dt.datetime) -> list[RunJob]:
    """Runs of generated candidates still to create, whose retry time has come, oldest first."""
    rows = c.execute(
        sa.select(t.pending_runs, t.candidates, t.prompts.c.messages)
        .join(t.candidates, t.candidates.c.id == t.pending_runs.c.candidate_id)
        .join(t.prompts, t.prompts.c.id == t.candidates.c.prompt_id)
        .where(sa.or_(t.pending_runs.c.retry_after.is_(None), t.pending_runs.c.retry_after <= now))
        .order_by(t.pending_runs.c.candidate_id)
        .limit(limit)
    ).all()
    same = ("candidate_id", "project", "messages", "text", "model", "adapter", "generation", "attempts")
    return [
        RunJob(run_id=r.langsmith_run_id, created_at=aware(r.created_at), **{k: r._mapping[k] for k in same})
        for r in rows
    ]


def mark_run_created(c: Connection, candidate_id: int, session_id: str) -> None:
    c.execute(sa.update(t.candidates).where(t.candidates.c.id == candidate_id).values(langsmith_session_id=session_id))
    c.execute(sa.delete(t.pending_runs).where(t.pending_runs.c.candidate_id == candidate_id))


def mark_run_failed(c: Connection, candidate_id: int, error: str, retry_at: dt.datetime) -> None:
    c.execute(
        sa.update(t.pending_runs)
        .where(t.pending_runs.c.candidate_id == candidate_id)
        .values(error=error[:2000], attempts=t.pending_runs.c.attempts + 1, retry_after=retry_at)
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
        runs_pending=c.execute(sa.select(sa.func.count()).select_from(t.pending_runs)).scalar_one(),
    )
