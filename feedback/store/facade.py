"""The :class:`Store` façade: one object that opens a transaction per call and hands it to an area's function."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import records
from feedback.enums import Role
from feedback.store import accounts, answers, doctor, items, logins, names, outbox, queue, reporting, settings, views
from feedback.store.common import checked_text, utcnow
from feedback.store.db import migrate, normalize_url, open_engine, transaction

P = ParamSpec("P")
T = TypeVar("T")


class Store:
    """All access to the feedback database. Thread-safe: each call runs in its own transaction."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = open_engine(url)

    @classmethod
    def create(cls, url: str) -> Store:
        """Create or upgrade the schema, then open the store."""
        migrate(url)
        return cls(url)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Connection]:
        """One transaction (:func:`feedback.store.db.transaction`: reads see one snapshot, writes lock)."""
        with transaction(self.engine, write) as connection:
            yield connection

    def _read(self, area: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._tx(write=False) as c:
            return area(c, *args, **kwargs)

    def _statement(self, area: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A read of ONE statement, outside a transaction (autocommit).

        A single statement sees one consistent state by itself, so it needs no snapshot; without
        BEGIN and COMMIT the check of a token, made on every request, costs one round trip to the
        database instead of three (measured under 32 annotators on PostgreSQL: p99 ~500 -> ~440 ms).
        """
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            return area(c, *args, **kwargs)

    def _write(self, area: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._tx() as c:
            return area(c, *args, **kwargs)

    # -- settings --------------------------------------------------------------------------

    def settings(self) -> views.Settings:
        return self._read(settings.read)

    def update_settings(self, **changes: Any) -> views.Settings:
        """Change ``overlap``, ``mode``, ``lease_minutes`` or ``guidelines`` (``None`` leaves one as it is)."""
        return self._write(settings.update, changes)

    # -- prompts and candidates ------------------------------------------------------------

    def add_prompts(self, prompts: Iterable[Any], external_ids: Iterable[str | None] | None = None) -> list[int]:
        """Store prompts (text or chat messages); returns their ids. A prompt stored before keeps its id."""
        return self._write(items.add_prompts, prompts, external_ids)

    def add_candidates(
        self,
        prompt_id: int,
        responses: Iterable[str | Mapping[str, Any]],
        *,
        model: str | None = None,
        adapter: str | None = None,
        generation: Mapping[str, Any] | None = None,
        langsmith_project: str | None = None,
    ) -> list[int]:
        """Store responses to a prompt; returns their ids (a response already stored keeps its id).

        A response is text or a mapping (:func:`feedback.store.items.add_candidate`), whose
        ``model``, ``adapter`` and ``generation`` override the keyword arguments. With
        ``langsmith_project`` each new response is recorded as a LangSmith run there (later, by the sync).
        """
        with self._tx() as c:
            return [
                items.add_candidate(
                    c,
                    prompt_id,
                    r,
                    model=model,
                    adapter=adapter,
                    generation=generation,
                    langsmith_project=langsmith_project,
                )[0]
                for r in responses
            ]

    def prompts_in_use(self) -> set[int]:
        """Prompts handed out or answered: ``rlhf feedback generate`` leaves them alone."""
        return self._read(items.prompts_in_use)

    def import_items(self, rows: Iterable[Mapping[str, Any]]) -> views.ImportReport:
        """Store validated import rows in one transaction, all or nothing (:func:`.items.import_items`)."""
        return self._write(items.import_items, rows)

    def prompts(self) -> list[tuple[int, records.Messages]]:
        """Every prompt as (id, messages), in id order."""
        return self._read(items.prompts)

    def assign_batch(
        self,
        prompt_ids: Sequence[int],
        batch: int,
        selected_by: str,
        scores: Sequence[float | None] | None = None,
    ) -> int:
        """Record that round ``batch`` (from 1) of iterated RLHF chose these prompts, with ``selected_by``'s scores.

        Prompts already in a batch keep theirs (a re-run after a crash is a no-op); returns how many
        prompts this call put into the batch (:func:`.items.assign_batch`).
        """
        return self._write(items.assign_batch, prompt_ids, batch, selected_by, scores)

    # -- annotators and credentials --------------------------------------------------------

    def add_annotator(self, name: str, role: str = Role.ANNOTATOR, password: str | None = None) -> str:
        """Create an annotator; returns a new API token (only its hash is kept: show it once)."""
        password_hash = accounts.new_password_hash(password) if password is not None else None
        return self._write(accounts.add_annotator, name, role, password_hash)

    def annotator(self, name: str) -> views.Annotator:
        """The annotator ``name`` names (compared as a login compares it: ``ROOT`` is ``root``)."""
        return self._read(accounts.annotator, name)

    def rename_annotator(self, name: str, to: str) -> str:
        """Rename an annotator (the new name is checked as a new one is); returns the name as stored."""
        return self._write(accounts.rename, name, to)

    def annotators(self) -> list[views.Annotator]:
        return self._read(accounts.annotators)

    def new_token(self, name: str, *, revoke_old: bool = True) -> str:
        """A fresh API token for an annotator (by default the old API tokens stop working); their sessions end."""
        return self._write(accounts.new_token, name, revoke_old=revoke_old)

    def set_password(self, name: str, password: str) -> None:
        """Change a password (at least :data:`~feedback.store.accounts.MIN_PASSWORD` characters); sessions end."""
        self._write(accounts.set_password, name, accounts.new_password_hash(password))

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (or reactivate) an annotator: their tokens stop working, sessions end, answers stay."""
        self._write(accounts.set_active, name, active)

    def authenticate(self, token: str) -> views.Annotator | None:
        """The active annotator a token (API or session) belongs to, or None."""
        return self._statement(accounts.authenticate, token)  # one SELECT

    def login(
        self, name: str, password: str, *, limits: logins.LoginLimits | None = None, address: str = ""
    ) -> tuple[str, views.Annotator]:
        """A session token for a name and password; the same message for every failure (no user probing).

        With ``limits`` (the web app) the attempt is counted for the name from ``address`` before the
        password is checked, and refused with :class:`TooManyAttempts` past them (:mod:`.logins`).
        The password is checked between transactions: scrypt takes a while, and no lock is held
        meanwhile. A hash made with older scrypt parameters is replaced by one at the current cost.
        """
        checked_text(name, "name")
        checked_text(password, "password")
        attempt = self._write(logins.reserve, limits, names.key(name), address) if limits else None
        row = self._read(accounts.find, name)
        annotator, rehashed = accounts.check_login(row, password)  # a failure leaves the attempt counted

        def start(c: Connection) -> str:
            if attempt is not None:
                logins.succeeded(c, attempt)
            return accounts.start_session(c, annotator.id, rehashed, row.password_hash)

        return self._write(start), annotator

    def logout(self, token: str) -> None:
        """End a session token's session (an API token is refused: :func:`.accounts.logout`)."""
        self._write(accounts.logout, token)

    # -- the queue ----------------------------------------------------------------------------

    def next_item(self, annotator_id: int) -> views.ItemView | None:
        """The item this annotator should answer next, or None (:func:`feedback.store.queue.next_item`)."""
        return self._write(queue.next_item, annotator_id)

    def next_with_progress(self, annotator_id: int) -> tuple[views.ItemView | None, views.AnnotatorProgress]:
        """:meth:`next_item` and then :meth:`annotator_progress`, in one transaction with one settings read.

        What the annotation page asks for on every item: one transaction instead of two halves its
        round trips to the database (on PostgreSQL under load, each costs more than the queries).
        """

        def both(c: Connection) -> tuple[views.ItemView | None, views.AnnotatorProgress]:
            current = settings.read(c)
            return queue.next_item(c, annotator_id, current), reporting.annotator_progress(c, annotator_id, current)

        return self._write(both)

    def held_item(self, annotator_id: int, prompt_id: int) -> tuple[views.ItemView, views.AnswerView | None]:
        """An item handed to this annotator (to revisit it), with their answer if they gave one."""
        with self._tx(write=False) as c:
            return queue.held_item(c, annotator_id, prompt_id), answers.answer_to(c, annotator_id, prompt_id)

    def skip(self, annotator_id: int, prompt_id: int, *, require_assignment: bool = False) -> None:
        """Discard an item for this annotator: it is not offered to them again and frees its slot.

        The web app sets ``require_assignment``: only an item handed to the annotator can be skipped,
        and any other is refused as the answer to it would be (:func:`.queue.skip`).
        """
        self._write(queue.skip, annotator_id, prompt_id, require_assignment)

    # -- answers ------------------------------------------------------------------------------

    def submit(
        self,
        annotator_id: int,
        prompt_id: int,
        *,
        client_id: str,
        thumbs: Mapping[int, bool] | None = None,
        ranks: Mapping[int, int] | None = None,
        comment: str | None = None,
        correction: str | None = None,
        corrected_candidate_id: int | None = None,
        require_assignment: bool = False,
        enforce_mode: bool = False,
    ) -> views.Receipt:
        """Record an annotator's answer to an item, exactly once per ``client_id`` (:func:`.answers.submit`).

        The web app sets ``require_assignment`` (only items handed out) and ``enforce_mode`` (the
        answer the project's mode asks for); scripts and simulated annotators may answer freely.

        A key that a concurrent request took first (its insert committed between our reads and
        ours) fails the transaction; a fresh one then tells a retry of the same answer (its
        receipt) from a second answer to the item (:class:`Conflict`).
        """
        sent = views.AnswerContent(dict(thumbs or {}), dict(ranks or {}), comment, correction, corrected_candidate_id)
        try:
            return self._write(
                answers.submit, annotator_id, prompt_id, client_id, sent, require_assignment, enforce_mode
            )
        except sa.exc.IntegrityError:
            return self._read(answers.replay_after_race, annotator_id, prompt_id, client_id, sent)

    def submit_ranking(
        self, annotator_id: int, prompt_id: int, ranks: Mapping[int, int], *, client_id: str, **extra: Any
    ) -> views.Receipt:
        """Rank every candidate of a prompt (1 is best, equal ranks are ties); see :meth:`submit`."""
        return self.submit(annotator_id, prompt_id, client_id=client_id, ranks=ranks, **extra)

    def submit_rating(
        self, annotator_id: int, prompt_id: int, thumbs: Mapping[int, bool], *, client_id: str, **extra: Any
    ) -> views.Receipt:
        """Thumbs up (True) or down (False) for candidates of a prompt; see :meth:`submit`."""
        return self.submit(annotator_id, prompt_id, client_id=client_id, thumbs=thumbs, **extra)

    def edit(
        self,
        annotator_id: int,
        submission_id: str,
        *,
        thumbs: Mapping[int, bool] | None = None,
        ranks: Mapping[int, int] | None = None,
        comment: str | None = None,
        correction: str | None = None,
        corrected_candidate_id: int | None = None,
        expected_revision: int | None = None,
        enforce_mode: bool = False,
    ) -> views.Receipt:
        """Replace an annotator's own answer, compare-and-set on its revision (:func:`feedback.store.answers.edit`)."""
        sent = views.AnswerContent(dict(thumbs or {}), dict(ranks or {}), comment, correction, corrected_candidate_id)
        return self._write(answers.edit, annotator_id, submission_id, sent, expected_revision, enforce_mode)

    def answer(self, annotator_id: int, submission_id: str) -> views.AnswerView:
        """One of this annotator's answers (another annotator's is reported as not found)."""
        return self._read(answers.answer, annotator_id, submission_id)

    def answers(self, annotator_id: int, limit: int = 50, offset: int = 0) -> list[views.AnswerView]:
        """This annotator's answers, newest first."""
        return self._read(answers.answers, annotator_id, limit, offset)

    # -- progress and records -------------------------------------------------------------------

    def progress(self) -> views.Progress:
        """Items total / complete / in progress / untouched, and answers per annotator."""
        return self._read(reporting.progress)

    def annotator_progress(self, annotator_id: int) -> views.AnnotatorProgress:
        """This annotator's answers so far and how many items are still open to them."""
        return self._read(reporting.annotator_progress, annotator_id)

    def records(self) -> list[records.Item]:
        """Every prompt with its candidates and all answers, for export and agreement (pure code)."""
        return self._read(reporting.records)

    def name_problems(self) -> list[str]:
        """Annotators whose names a new account could not have (refused characters, a shared key or look)."""
        return names.collisions(dict((a.id, a.name) for a in self.annotators()))

    def encoding_problems(self) -> list[doctor.EncodingProblem]:
        """Stored values that UTF-8 cannot encode, by table, row and column (``rlhf feedback doctor``)."""
        return self._read(doctor.encoding_problems)

    def submission_ids(self) -> list[str]:
        """Every stored submission id (the load test counts them against what was acknowledged)."""
        return self._read(reporting.submission_ids)

    # -- LangSmith outbox ------------------------------------------------------------------------

    def pending_sync(self, limit: int = 100, now: dt.datetime | None = None) -> list[views.SyncJob]:
        """Submissions on candidates with LangSmith runs whose latest revision is not in LangSmith yet
        (those on an item whose runs are not all created yet wait)."""
        return self._read(outbox.pending_sync, limit, now or utcnow())

    def mark_synced(self, submission_id: str, revision: int) -> None:
        """Record that ``revision`` reached LangSmith (never moves back: a slow older pass cannot undo a newer one)."""
        self._write(outbox.mark_synced, submission_id, revision)

    def mark_sync_failed(self, submission_id: str, error: str, retry_at: dt.datetime) -> None:
        self._write(outbox.mark_sync_failed, submission_id, error, retry_at)

    def pending_runs(self, limit: int = 100, now: dt.datetime | None = None) -> list[views.RunJob]:
        """LangSmith runs of generated candidates still to create, whose retry time has come."""
        return self._read(outbox.pending_runs, limit, now or utcnow())

    def mark_run_created(self, candidate_id: int, session_id: str) -> None:
        """The candidate's run exists in LangSmith, in the project ``session_id``."""
        self._write(outbox.mark_run_created, candidate_id, session_id)

    def mark_run_failed(self, candidate_id: int, error: str, retry_at: dt.datetime) -> None:
        self._write(outbox.mark_run_failed, candidate_id, error, retry_at)

    def sync_status(self) -> views.SyncStatus:
        return self._read(outbox.sync_status)
