"""Every answer also recorded as LangSmith feedback, without blocking annotators or losing ratings.

Configured by the environment (``LANGSMITH_API_KEY``, optionally ``LANGSMITH_ENDPOINT``); the
``langsmith`` client does the HTTP. The store is the outbox: an answer is committed first (that is
the acknowledgement the annotator gets), and :class:`LangSmithSync` sends whatever the store says
is not in LangSmith yet (``Store.pending_sync``) from a background thread, woken after each answer
and every few seconds. A failed send is retried with exponential backoff (up to
``MAX_BACKOFF_S``), across server restarts too, because the state lives in the database.

What is sent, per answer, for each candidate that came from a LangSmith run (``run_id``):

* key ``thumbs``: score 1 (up) or 0 (down), value ``"up"``/``"down"``;
* key ``rank``: score from 1 (best) to 0 (worst), value the rank (1 is best);
* key ``correction`` for a corrected response with neither of the above;
* the answer's comment on each, the corrected response as ``correction`` on the candidate it edits
  (on all of them when it edits none); ``source_info`` names the annotator and the answer.

Feedback ids are derived from (answer, candidate, key), so a resend after a crash between
"LangSmith stored it" and "we marked it sent" finds it (409) and updates it instead of adding a
second one; an edited answer updates the same feedback, and feedback its earlier revision had
but the edit no longer has (a thumb taken back, a ranking turned into thumbs) is deleted, so
LangSmith never keeps a score the annotator withdrew. The answers of one item share a
``feedback_group_id``. Candidates with no LangSmith run (generated locally, imported without a
``run_id``) have nothing to attach feedback to and are not sent.

Candidates made by ``rlhf feedback generate --langsmith-project P`` get their run id when they are
stored, and a row in the store's run outbox; each pass first creates those runs (:func:`run_for`:
inputs the prompt, outputs the response, metadata model, adapter and generation settings) with
the same backoff, then sends answers. Answers on an item whose runs are not all created wait, so
feedback never names a run LangSmith lacks. The run id is fixed before the first attempt, so a
create repeated after a crash is a 409 that the client treats as done: a run is never made twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from feedback.store import RunJob, Store, SyncJob, utcnow

logger = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6f1c2f0e-8d3b-4b7a-9a53-2c1f4e5d7a10")  # fixed: feedback ids must be the same on every run
MAX_BACKOFF_S = 300.0
FIRST_BACKOFF_S = 2.0


@dataclass(frozen=True)
class FeedbackSpec:
    """One ``create_feedback`` call, as data (so what is sent is tested without a server)."""

    feedback_id: str
    run_id: str
    session_id: str | None
    key: str
    score: float
    value: Any
    comment: str | None
    correction: dict[str, str] | None
    source_info: dict[str, Any]
    group_id: str


KEYS = ("thumbs", "rank", "correction")  # the questions feedback_for sends, one feedback record each


def _feedback_id(submission_id: str, candidate_id: int, key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{submission_id}/{candidate_id}/{key}"))


def feedback_for(job: SyncJob) -> list[FeedbackSpec]:
    """The feedback records of an answer, one per (candidate with a run, question)."""
    group = str(uuid.uuid5(NAMESPACE, f"answer/{job.submission_id}"))
    source = {
        "annotator": job.annotator,
        "annotator_id": job.annotator_id,
        "answer_id": job.submission_id,
        "revision": job.revision,
        "source": "rlhf-feedback",
    }
    worst = max(job.ranks.values(), default=1)
    questions: dict[int, list[tuple[str, float, Any]]] = {}
    for candidate_id, up in job.thumbs.items():
        questions.setdefault(candidate_id, []).append(("thumbs", 1.0 if up else 0.0, "up" if up else "down"))
    for candidate_id, rank in job.ranks.items():
        score = (worst - rank) / (worst - 1) if worst > 1 else 1.0
        questions.setdefault(candidate_id, []).append(("rank", score, rank))
    if job.correction is not None and not questions:
        targets = [job.corrected_candidate_id] if job.corrected_candidate_id is not None else list(job.runs)
        for candidate_id in targets:
            questions[candidate_id] = [("correction", 0.0, "corrected")]
    specs = []
    for candidate_id, entries in sorted(questions.items()):
        if candidate_id not in job.runs:
            continue
        run_id, session_id = job.runs[candidate_id]
        corrected = job.correction is not None and job.corrected_candidate_id in (None, candidate_id)
        for key, score, value in entries:
            specs.append(
                FeedbackSpec(
                    feedback_id=_feedback_id(job.submission_id, candidate_id, key),
                    run_id=run_id,
                    session_id=session_id,
                    key=key,
                    score=round(score, 4),
                    value=value,
                    comment=job.comment,
                    correction={"text": job.correction} if corrected and job.correction else None,
                    source_info=source,
                    group_id=group,
                )
            )
    return specs


def withdrawn_for(job: SyncJob, specs: list[FeedbackSpec]) -> list[str]:
    """Feedback ids an earlier revision of this answer may have created that this one does not send.

    Ids are derived, so this needs no record of what was sent: every (candidate with a run,
    question) the current revision does not cover. Deleting one that never existed is a 404,
    which :func:`withdraw` ignores. A first sync has nothing earlier to withdraw.
    """
    if job.first_sync:
        return []
    current = {spec.feedback_id for spec in specs}
    every = (_feedback_id(job.submission_id, candidate_id, key) for candidate_id in sorted(job.runs) for key in KEYS)
    return [feedback_id for feedback_id in every if feedback_id not in current]


def withdraw(client: Any, feedback_id: str) -> None:
    """Delete one feedback record; one that is not there (never sent, deleted before) is fine."""
    from langsmith.utils import LangSmithNotFoundError

    with contextlib.suppress(LangSmithNotFoundError):
        client.delete_feedback(feedback_id)


def client_from_env() -> Any | None:
    """A LangSmith client when ``LANGSMITH_API_KEY`` is set, else None (sync off)."""
    if not os.environ.get("LANGSMITH_API_KEY"):
        return None
    from langsmith import Client
    from urllib3.util.retry import Retry

    # Few, quick transport retries: our own backoff (from the store) handles longer outages.
    return Client(
        api_url=os.environ.get("LANGSMITH_ENDPOINT") or None,
        api_key=os.environ["LANGSMITH_API_KEY"],
        auto_batch_tracing=False,
        retry_config=Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504], allowed_methods=None),
        timeout_ms=(3_000, 15_000),
    )


def send(client: Any, spec: FeedbackSpec, create: bool) -> None:
    """Create (or, for a revision already sent once, update) one feedback record, idempotently."""
    from langsmith.utils import LangSmithConflictError, LangSmithNotFoundError

    fields = {"score": spec.score, "value": spec.value, "comment": spec.comment, "correction": spec.correction}
    if not create:
        try:
            client.update_feedback(spec.feedback_id, **fields)
            return
        except LangSmithNotFoundError:
            pass  # never arrived (a new question in an edited answer): create it
    try:
        client.create_feedback(
            spec.run_id,
            spec.key,
            **fields,
            source_info=spec.source_info,
            feedback_id=spec.feedback_id,
            feedback_group_id=spec.group_id,
            session_id=spec.session_id,
            stop_after_attempt=1,
        )
    except LangSmithConflictError:
        client.update_feedback(spec.feedback_id, **fields)  # sent before, not marked: make it current


def run_for(job: RunJob) -> dict[str, Any]:
    """The ``create_run`` arguments of a generated candidate (its id fixed: a repeat is a no-op 409)."""
    return {
        "name": "rlhf feedback generate",
        "run_type": "llm",
        "id": job.run_id,
        "project_name": job.project,
        "inputs": {"messages": job.messages},
        "outputs": {"output": job.text},
        "start_time": job.created_at,
        "end_time": job.created_at,
        "extra": {
            "metadata": {
                "ls_model_name": job.model,
                "model": job.model,
                "adapter": job.adapter,
                "generation": job.generation,
                "source": "rlhf-feedback",
            }
        },
    }


def backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**attempts))


def _retry_later(what: str, attempts: int, error: Exception) -> None:
    logger.warning("LangSmith %s failed (attempt %d): %s", what, attempts + 1, error)


def _described(error: Exception) -> str:
    """The error as stored in the outbox (the admin's sync page shows the last one)."""
    return f"{type(error).__name__}: {error}"


@dataclass
class SyncResult:
    sent: int = 0
    failed: int = 0
    runs_created: int = 0
    runs_failed: int = 0


class LangSmithSync:
    """Sends pending answers to LangSmith from a daemon thread (or once, with :meth:`run_once`)."""

    def __init__(self, store: Store, client: Any, interval_s: float = 5.0, batch: int = 100) -> None:
        self.store = store
        self.client = client
        self.interval_s = interval_s
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def create_runs(self, result: SyncResult, now: dt.datetime | None = None) -> None:
        """Create the LangSmith runs of generated candidates that are due; failures are retried later.

        The project's id is read back after the first run (LangSmith creates the project with it)
        and stored on the candidate: feedback is sent with its run's session id.
        """
        sessions: dict[str, str] = {}
        for job in self.store.pending_runs(limit=self.batch, now=now):
            try:
                self.client.create_run(**run_for(job))
                if job.project not in sessions:
                    sessions[job.project] = str(self.client.read_project(project_name=job.project).id)
            except Exception as error:  # any failure: keep it in the outbox, try again later
                _retry_later(f"run of candidate {job.candidate_id}", job.attempts, error)
                self.store.mark_run_failed(job.candidate_id, _described(error), utcnow() + backoff(job.attempts))
                result.runs_failed += 1
                continue
            self.store.mark_run_created(job.candidate_id, sessions[job.project])
            result.runs_created += 1

    def run_once(self, now: dt.datetime | None = None) -> SyncResult:
        """Create the runs, then send every answer that is due; failures are scheduled for a later attempt."""
        result = SyncResult()
        self.create_runs(result, now)
        for job in self.store.pending_sync(limit=self.batch, now=now):
            try:
                specs = feedback_for(job)
                for spec in specs:
                    send(self.client, spec, create=job.first_sync)
                for feedback_id in withdrawn_for(job, specs):
                    withdraw(self.client, feedback_id)
            except Exception as error:  # any failure: keep it in the outbox, try again later
                _retry_later(f"sync of answer {job.submission_id}", job.attempts, error)
                self.store.mark_sync_failed(job.submission_id, _described(error), utcnow() + backoff(job.attempts))
                result.failed += 1
                continue
            self.store.mark_synced(job.submission_id, job.revision)
            result.sent += 1
        return result

    def notify(self) -> None:
        """Wake the thread now (an answer was just stored)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the database itself failed: the loop must survive it
                logger.exception("LangSmith sync pass failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="langsmith-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
