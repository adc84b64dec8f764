"""The durable feedback store: every read and write of annotation data goes through :class:`Store`.

SQLite is the embedded default (a file, WAL journal, ``synchronous=FULL`` so an acknowledged
commit survives a crash or power loss); PostgreSQL is used by URL for teams
(``postgresql://user@host/db``, served by psycopg 3). The schema lives in :mod:`feedback.schema`
and is created and upgraded by the Alembic migrations shipped in ``feedback/migrations``
(:func:`migrate`, ``rlhf feedback migrate``, and automatically by ``Store.create`` and ``serve``).

Python API (the web app, the CLI and simulated annotators all use it)::

    store = Store.create("sqlite:///feedback.db")            # migrate, then open
    token = store.add_annotator("alice", "annotator", password="...")  # returns an API token, once
    [pid] = store.add_prompts(["What is 2 plus 3?"])
    cids = store.add_candidates(pid, ["2 plus 3 is 5.", "Ugh. 5."], model="builtin:tiny", generation={...})
    alice = store.authenticate(token)
    item = store.next_item(alice.id)                         # candidates shuffled, model hidden
    store.submit_ranking(alice.id, pid, {cids[0]: 1, cids[1]: 2}, client_id="uuid-from-the-client")
    store.submit_rating(alice.id, pid, {cids[0]: True, cids[1]: False}, client_id=...)  # thumbs
    store.progress(); store.records()                        # -> feedback.export / feedback.agreement

Submissions are idempotent: the client supplies the id, a retry with the same id and body
returns the first receipt (``created=False``), the same id with another body is a conflict.
Errors are :class:`StoreError` subclasses (:class:`NotFound`, :class:`Conflict`,
:class:`Invalid`, :class:`Forbidden`, :class:`Unauthorized`) whose message is written for the
person who sent the request; the web app maps them to 4xx responses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feedback import records
from feedback import schema as t

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_GUIDELINES = """\
**Read the prompt, then judge each response as its reader would.**

- Prefer responses that are *correct*, then *helpful and polite*, then *concise*.
- Thumbs up: you would be glad to receive this response. Thumbs down: you would not.
- Ranking: 1 is the best. Give equal ranks when two responses are equally good.
- If every response is poor, write a corrected response below.
"""
SETTINGS_DEFAULTS: dict[str, Any] = {
    "overlap": 1,  # annotators per item
    "mode": "ranking",  # what the annotation page asks: "ranking" or "thumbs"
    "lease_minutes": 30,  # an item handed out and not answered within this is offered to others
    "guidelines": DEFAULT_GUIDELINES,
}
MODES = ("ranking", "thumbs")
SESSION_HOURS = 12
MAX_TEXT = 20_000  # characters of a comment or correction


class StoreError(Exception):
    """A request the store refuses; the message says why, for the person who sent it."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class Invalid(StoreError):
    pass


class Forbidden(StoreError):
    pass


class Unauthorized(StoreError):
    pass


# ----------------------------------------------------------------------------------------------
# Values the store returns


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    role: str
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Settings:
    overlap: int
    mode: str
    lease_minutes: int
    guidelines: str


@dataclass(frozen=True)
class ItemView:
    """What an annotator sees of an item: candidates in a per-annotator random order, no model names."""

    prompt_id: int
    messages: records.Messages
    candidates: list[dict[str, Any]]  # [{"id": ..., "text": ...}]
    mode: str


@dataclass(frozen=True)
class AnswerView:
    """An annotator's own answer, as stored (for listing and editing)."""

    id: str
    prompt_id: int
    thumbs: dict[int, bool]
    ranks: dict[int, int]
    comment: str | None
    correction: str | None
    corrected_candidate_id: int | None
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
class SyncJob:
    """One submission whose current revision has not reached LangSmith yet."""

    submission_id: str
    revision: int
    annotator: str
    annotator_id: int
    prompt_id: int
    thumbs: dict[int, bool]
    ranks: dict[int, int]
    comment: str | None
    correction: str | None
    corrected_candidate_id: int | None
    runs: dict[int, tuple[str, str | None]]  # candidate id -> (run id, session id)
    attempts: int
    first_sync: bool


@dataclass
class ImportReport:
    prompts_added: int = 0
    prompts_existing: int = 0
    candidates_added: int = 0
    candidates_existing: int = 0
    prompt_ids: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Engines and migrations


def normalize_url(url: str) -> str:
    """A database URL for SQLAlchemy: a bare path means SQLite, ``postgresql://`` means psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs and manifests."""
    return sa.make_url(normalize_url(url)).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling starts transactions late (at the first write), which
    # lets two writers read the same state; the "begin" listener below emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acknowledged
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # Writers take the write lock at BEGIN: a deferred transaction that reads and then writes can
    # fail with "database is locked" when another writer committed in between, whatever the timeout.
    immediate = connection.get_execution_options().get("immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True, pool_timeout=60)


# Alembic is imported where it is used: importing it logs a line per plugin, before the CLI can quiet it.


def _alembic_config(connection: Connection | None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(url: str, revision: str = "head", *, downgrade: bool = False) -> str | None:
    """Upgrade the database at ``url`` to ``revision`` (or downgrade to it); returns the revision reached."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            config = _alembic_config(connection)
            (command.downgrade if downgrade else command.upgrade)(config, revision)
            connection.commit()
        return current_revision(engine)
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------------
# Small pure helpers


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt (n=2^14, r=8, p=1): memory-hard, in the standard library."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def dense_ranks(ranks: Mapping[int, float]) -> dict[int, int]:
    """Ranks renumbered 1, 2, ... keeping order and ties: (1, 1, 3) and (1, 1, 2) mean the same ranking."""
    levels = {value: index + 1 for index, value in enumerate(sorted(set(ranks.values())))}
    return {candidate: levels[value] for candidate, value in ranks.items()}


def shuffled_for(annotator_id: int, prompt_id: int, items: list[Any]) -> list[Any]:
    """A per-annotator, per-item random order that stays the same on reload (position bias control)."""
    out = list(items)
    random.Random(f"{annotator_id}:{prompt_id}").shuffle(out)
    return out


def _normalise_text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name}: expected text")
    if len(value) > MAX_TEXT:
        raise Invalid(f"{name}: {len(value)} characters, at most {MAX_TEXT}")
    return value if value.strip() else None


def _answer_fields(row: Any, thumbs: dict[int, bool], ranks: dict[int, int]) -> dict[str, Any]:
    return {
        "thumbs": thumbs,
        "ranks": ranks,
        "comment": row.comment,
        "correction": row.correction,
        "corrected_candidate_id": row.corrected_candidate_id,
    }


def _answer_view(row: Any, answer: Mapping[str, Any]) -> AnswerView:
    return AnswerView(
        id=row.id,
        prompt_id=row.prompt_id,
        revision=row.revision,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        **answer,
    )


# ----------------------------------------------------------------------------------------------
# The store


class Store:
    """All access to the feedback database. Thread-safe: each call runs in its own transaction."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        current, head = current_revision(self.engine), head_revision()
        if current != head:
            self.engine.dispose()
            raise StoreError(
                f"{redact(url)}: database schema is at revision {current or 'none (empty database)'}, "
                f"this version needs {head}; run `rlhf feedback migrate --db URL`"
            )

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
        """One transaction. A read (``write=False``) sees one consistent snapshot of the database.

        Reads run several statements (submissions, then their ratings and ranks): under
        PostgreSQL's default READ COMMITTED each statement has its own snapshot, so an export
        running while answers arrive could see a submission without its ratings, or ratings of a
        submission it did not see. Reads therefore run as REPEATABLE READ, READ ONLY (one snapshot
        for the whole transaction; a read-only one never fails to serialise). SQLite in WAL mode
        gives a read transaction one snapshot from its first read on. Writes stay READ COMMITTED
        and take locks (``BEGIN IMMEDIATE`` on SQLite, row locks on PostgreSQL).
        """
        with self.engine.connect() as connection:
            if write:
                connection.execution_options(immediate=True)
            elif self.backend == "postgresql":
                connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with connection.begin():
                yield connection

    # -- settings --------------------------------------------------------------------------

    def settings(self) -> Settings:
        with self._tx(write=False) as c:
            return self._settings(c)

    def _settings(self, c: Connection) -> Settings:
        stored = dict(c.execute(sa.select(t.settings.c.key, t.settings.c.value)).tuples().all())
        return Settings(**{**SETTINGS_DEFAULTS, **{k: v for k, v in stored.items() if k in SETTINGS_DEFAULTS}})

    def update_settings(self, **changes: Any) -> Settings:
        """Change ``overlap``, ``mode``, ``lease_minutes`` or ``guidelines`` (``None`` leaves one as it is)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(SETTINGS_DEFAULTS))
        if unknown:
            raise Invalid(f"unknown setting(s) {unknown}; known: {sorted(SETTINGS_DEFAULTS)}")
        for key in ("overlap", "lease_minutes"):
            if key in changes and (not isinstance(changes[key], int) or isinstance(changes[key], bool)):
                raise Invalid(f"{key}: expected a whole number, got {changes[key]!r}")
            if key in changes and not 1 <= changes[key] <= 10_000:
                raise Invalid(f"{key}: must be between 1 and 10000")
        if "mode" in changes and changes["mode"] not in MODES:
            raise Invalid(f"mode: expected one of {list(MODES)}, got {changes['mode']!r}")
        if "guidelines" in changes:
            changes["guidelines"] = str(changes["guidelines"])[:MAX_TEXT]
        with self._tx() as c:
            for key, value in changes.items():
                c.execute(sa.delete(t.settings).where(t.settings.c.key == key))
                c.execute(sa.insert(t.settings).values(key=key, value=value))
            return self._settings(c)

    # -- prompts and candidates ------------------------------------------------------------

    def add_prompts(self, prompts: Iterable[Any], external_ids: Iterable[str | None] | None = None) -> list[int]:
        """Store prompts (text or chat messages); returns their ids. A prompt stored before keeps its id."""
        prompt_list = list(prompts)
        ids = list(external_ids) if external_ids is not None else [None] * len(prompt_list)
        if len(ids) != len(prompt_list):
            raise Invalid("add_prompts: as many external ids as prompts are needed")
        with self._tx() as c:
            return [self._add_prompt(c, prompt, external)[0] for prompt, external in zip(prompt_list, ids, strict=True)]

    def _add_prompt(self, c: Connection, prompt: Any, external_id: str | None) -> tuple[int, bool]:
        messages = records.prompt_messages(prompt)
        key = _sha256(f"id:{external_id}" if external_id else f"messages:{_canonical(messages)}")
        existing = c.execute(sa.select(t.prompts.c.id, t.prompts.c.messages).where(t.prompts.c.key == key)).first()
        if existing is not None:
            # The external id is the client's idempotency key: re-importing the same row is a no-op,
            # but the same id with other content is a mistake to report, not one to paper over by
            # returning the old prompt (its answers would be exported under the new text's id).
            if external_id and _canonical(existing.messages) != _canonical(messages):
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

    def add_candidates(
        self,
        prompt_id: int,
        responses: Iterable[str | Mapping[str, Any]],
        *,
        model: str | None = None,
        adapter: str | None = None,
        generation: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Store responses to a prompt; returns their ids (a response already stored keeps its id).

        A response is text, or a mapping with ``text`` and optionally ``model``, ``adapter``,
        ``generation``, ``run_id`` and ``session_id`` (its LangSmith run and project), which
        override the keyword arguments.
        """
        with self._tx() as c:
            return [
                self._add_candidate(c, prompt_id, r, model=model, adapter=adapter, generation=generation)[0]
                for r in responses
            ]

    def _add_candidate(
        self,
        c: Connection,
        prompt_id: int,
        response: str | Mapping[str, Any],
        **defaults: Any,
    ) -> tuple[int, bool]:
        spec = {"text": response} if isinstance(response, str) else dict(response)
        text = spec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Invalid(f"prompt {prompt_id}: a response must be non-empty text")
        # Locked on PostgreSQL (as next_item and submit do), so no item is handed out or answered
        # between the check below and the insert.
        if not self._lock_prompt(c, prompt_id):
            raise NotFound(f"no prompt {prompt_id}")
        text_hash = _sha256(text)
        existing = c.execute(
            sa.select(t.candidates.c.id).where(
                t.candidates.c.prompt_id == prompt_id, t.candidates.c.text_hash == text_hash
            )
        ).scalar()
        if existing is not None:
            return existing, False
        if self._in_use(c, prompt_id):
            # A ranking covers every candidate the annotator saw: a candidate added afterwards
            # would be unranked in the stored rankings (and an open ranking could not be submitted).
            raise Conflict(
                f"prompt {prompt_id} was already handed out or answered; its candidates cannot change any more"
            )
        generation = spec.get("generation", defaults["generation"])
        values = {
            "prompt_id": prompt_id,
            "text": text,
            "text_hash": text_hash,
            "model": spec.get("model", defaults["model"]),
            "adapter": spec.get("adapter", defaults["adapter"]),
            "generation": dict(generation) if generation is not None else None,
            "langsmith_run_id": str(spec["run_id"]) if spec.get("run_id") else None,
            "langsmith_session_id": str(spec["session_id"]) if spec.get("session_id") else None,
            "created_at": utcnow(),
        }
        return c.execute(sa.insert(t.candidates).values(**values).returning(t.candidates.c.id)).scalar_one(), True

    # Items an annotator holds or has answered: their candidate sets are fixed.
    _IN_USE = sa.select(t.assignments.c.prompt_id).where(t.assignments.c.status.in_(("assigned", "submitted")))

    def _in_use(self, c: Connection, prompt_id: int) -> bool:
        """Whether an annotator has answered this item or holds it."""
        return c.execute(self._IN_USE.where(t.assignments.c.prompt_id == prompt_id).limit(1)).first() is not None

    def prompts_in_use(self) -> set[int]:
        """Prompts handed out or answered: ``rlhf feedback generate`` leaves them alone."""
        with self._tx(write=False) as c:
            return set(c.execute(self._IN_USE.distinct()).scalars())

    def import_items(self, rows: Iterable[Mapping[str, Any]]) -> ImportReport:
        """Store validated import rows ``{"prompt", "id"?, "candidates"?: [text | {...}]}`` in one transaction.

        All or nothing: a row that fails leaves the store as it was. Validation (with file, line
        and field in the messages) is :func:`feedback.importer.validate_rows`' job.
        """
        report = ImportReport()
        with self._tx() as c:
            for row in rows:
                prompt_id, added = self._add_prompt(c, row["prompt"], row.get("id"))
                report.prompt_ids.append(prompt_id)
                report.prompts_added += added
                report.prompts_existing += not added
                for candidate in row.get("candidates") or []:
                    _, new = self._add_candidate(c, prompt_id, candidate, model=None, adapter=None, generation=None)
                    report.candidates_added += new
                    report.candidates_existing += not new
        return report

    def prompts(self) -> list[tuple[int, records.Messages]]:
        """Every prompt as (id, messages), in id order."""
        with self._tx(write=False) as c:
            rows = c.execute(sa.select(t.prompts.c.id, t.prompts.c.messages).order_by(t.prompts.c.id))
            return [(row.id, row.messages) for row in rows]

    # -- annotators and credentials --------------------------------------------------------

    def add_annotator(self, name: str, role: str = "annotator", password: str | None = None) -> str:
        """Create an annotator; returns a new API token (only its hash is kept: show it once)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise Invalid("name: 1 to 100 characters")
        if role not in t.ROLES:
            raise Invalid(f"role: expected one of {list(t.ROLES)}, got {role!r}")
        with self._tx() as c:
            if c.execute(sa.select(t.annotators.c.id).where(t.annotators.c.name == name)).scalar() is not None:
                raise Conflict(f"an annotator named {name!r} exists already")
            annotator_id = c.execute(
                sa.insert(t.annotators)
                .values(
                    name=name,
                    role=role,
                    password_hash=hash_password(password) if password else None,
                    active=True,
                    created_at=utcnow(),
                )
                .returning(t.annotators.c.id)
            ).scalar_one()
            return self._issue_token(c, annotator_id, "api")

    def _issue_token(self, c: Connection, annotator_id: int, kind: str) -> str:
        token = f"rlhf_{secrets.token_urlsafe(32)}"
        expires = utcnow() + dt.timedelta(hours=SESSION_HOURS) if kind == "session" else None
        c.execute(
            sa.insert(t.tokens).values(
                token_hash=_sha256(token), annotator_id=annotator_id, kind=kind, created_at=utcnow(), expires_at=expires
            )
        )
        return token

    def _annotator_row(self, c: Connection, name: str) -> Any:
        row = c.execute(sa.select(t.annotators).where(t.annotators.c.name == name)).first()
        if row is None:
            raise NotFound(f"no annotator named {name!r}")
        return row

    def annotator(self, name: str) -> Annotator:
        with self._tx(write=False) as c:
            row = self._annotator_row(c, name)
            return Annotator(row.id, row.name, row.role, row.active)

    def annotators(self) -> list[Annotator]:
        with self._tx(write=False) as c:
            rows = c.execute(sa.select(t.annotators).order_by(t.annotators.c.id))
            return [Annotator(r.id, r.name, r.role, r.active) for r in rows]

    def new_token(self, name: str, *, revoke_old: bool = True) -> str:
        """A fresh API token for an annotator (by default the old API tokens stop working)."""
        with self._tx() as c:
            row = self._annotator_row(c, name)
            if revoke_old:
                c.execute(sa.delete(t.tokens).where(t.tokens.c.annotator_id == row.id, t.tokens.c.kind == "api"))
            return self._issue_token(c, row.id, "api")

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise Invalid("password: at least 8 characters")
        with self._tx() as c:
            row = self._annotator_row(c, name)
            c.execute(
                sa.update(t.annotators).where(t.annotators.c.id == row.id).values(password_hash=hash_password(password))
            )

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (or reactivate) an annotator: their tokens stop working, their answers stay."""
        with self._tx() as c:
            row = self._annotator_row(c, name)
            c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(active=active))

    def authenticate(self, token: str) -> Annotator | None:
        """The active annotator a token (API or session) belongs to, or None."""
        if not token:
            return None
        query = (
            sa.select(t.annotators, t.tokens.c.expires_at)
            .join(t.tokens, t.tokens.c.annotator_id == t.annotators.c.id)
            .where(t.tokens.c.token_hash == _sha256(token))
        )
        with self._tx(write=False) as c:
            row = c.execute(query).first()
        if row is None or not row.active or (row.expires_at is not None and _aware(row.expires_at) < utcnow()):
            return None
        return Annotator(row.id, row.name, row.role, row.active)

    def login(self, name: str, password: str) -> tuple[str, Annotator]:
        """A session token for a name and password; the same message for every failure (no user probing)."""
        with self._tx(write=False) as c:
            row = c.execute(sa.select(t.annotators).where(t.annotators.c.name == name)).first()
        stored = row.password_hash if row is not None else None
        # Hash even for unknown names, so the response time does not tell which names exist.
        valid = verify_password(password, stored or hash_password("", salt=b"0" * 16))
        if row is None or not stored or not valid or not row.active:
            raise Unauthorized("wrong name or password")
        with self._tx() as c:
            c.execute(sa.delete(t.tokens).where(t.tokens.c.expires_at < utcnow()))
            token = self._issue_token(c, row.id, "session")
        return token, Annotator(row.id, row.name, row.role, row.active)

    def logout(self, token: str) -> None:
        with self._tx() as c:
            c.execute(sa.delete(t.tokens).where(t.tokens.c.token_hash == _sha256(token), t.tokens.c.kind == "session"))

    # -- the queue ----------------------------------------------------------------------------

    def _taken(self, lease_cutoff: dt.datetime) -> Any:
        """Assignments that occupy one of an item's ``overlap`` slots: answered, or handed out recently."""
        return sa.or_(
            t.assignments.c.status == "submitted",
            sa.and_(t.assignments.c.status == "assigned", t.assignments.c.assigned_at > lease_cutoff),
        )

    def _slots_taken(self, c: Connection, prompt_id: int, lease_cutoff: dt.datetime, exclude: int) -> int:
        return c.execute(
            sa.select(sa.func.count())
            .select_from(t.assignments)
            .where(
                t.assignments.c.prompt_id == prompt_id,
                t.assignments.c.annotator_id != exclude,
                self._taken(lease_cutoff),
            )
        ).scalar_one()

    def _open_prompts(self, c: Connection, annotator_id: int, settings: Settings, lease_cutoff: dt.datetime) -> Any:
        """Prompts this annotator may still get: enough candidates, not seen by them, a free slot."""
        n_candidates = (
            sa.select(sa.func.count())
            .select_from(t.candidates)
            .where(t.candidates.c.prompt_id == t.prompts.c.id)
            .scalar_subquery()
        )
        taken = (
            sa.select(sa.func.count())
            .select_from(t.assignments)
            .where(t.assignments.c.prompt_id == t.prompts.c.id, self._taken(lease_cutoff))
            .scalar_subquery()
        )
        seen = sa.exists().where(
            t.assignments.c.prompt_id == t.prompts.c.id, t.assignments.c.annotator_id == annotator_id
        )
        minimum = 2 if settings.mode == "ranking" else 1
        return sa.and_(n_candidates >= minimum, ~seen, taken < settings.overlap)

    def next_item(self, annotator_id: int) -> ItemView | None:
        """The item this annotator should answer next (the one handed out before, if still open), or None.

        Items are handed out in id order, so each is completed by ``overlap`` annotators before
        the next starts: finished items leave the queue early. The hand-out is a row lock
        (PostgreSQL) or the write lock (SQLite), so two annotators never take the last slot twice.
        """
        with self._tx() as c:
            settings = self._settings(c)
            now = utcnow()
            cutoff = now - dt.timedelta(minutes=settings.lease_minutes)
            held = c.execute(
                sa.select(t.assignments.c.prompt_id)
                .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.status == "assigned")
                .order_by(t.assignments.c.assigned_at)
            ).scalars()
            for prompt_id in held:
                if self._slots_taken(c, prompt_id, cutoff, exclude=annotator_id) < settings.overlap:
                    c.execute(
                        sa.update(t.assignments)
                        .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.prompt_id == prompt_id)
                        .values(assigned_at=now, updated_at=now)
                    )
                    return self._item_view(c, annotator_id, prompt_id, settings)
            condition = self._open_prompts(c, annotator_id, settings, cutoff)
            for _ in range(20):  # retry when another annotator took the last slot first (PostgreSQL)
                prompt_id = c.execute(
                    sa.select(t.prompts.c.id).where(condition).order_by(t.prompts.c.id).limit(1)
                ).scalar()
                if prompt_id is None:
                    return None
                if self.backend == "postgresql":
                    self._lock_prompt(c, prompt_id)
                    if self._slots_taken(c, prompt_id, cutoff, exclude=annotator_id) >= settings.overlap:
                        continue
                c.execute(
                    sa.insert(t.assignments).values(
                        annotator_id=annotator_id,
                        prompt_id=prompt_id,
                        status="assigned",
                        assigned_at=now,
                        updated_at=now,
                    )
                )
                return self._item_view(c, annotator_id, prompt_id, settings)
            return None

    def held_item(self, annotator_id: int, prompt_id: int) -> tuple[ItemView, AnswerView | None]:
        """An item handed to this annotator (to revisit it), with their answer if they gave one."""
        with self._tx(write=False) as c:
            status = self._assignment(c, annotator_id, prompt_id)
            if status is None:
                raise NotFound(f"prompt {prompt_id} is not among your items")
            view = self._item_view(c, annotator_id, prompt_id, self._settings(c))
            row = c.execute(
                sa.select(t.submissions).where(
                    t.submissions.c.annotator_id == annotator_id, t.submissions.c.prompt_id == prompt_id
                )
            ).first()
            return view, _answer_view(row, self._stored_answer(c, row)) if row is not None else None

    @staticmethod
    def _assignment(c: Connection, annotator_id: int, prompt_id: int) -> str | None:
        return c.execute(
            sa.select(t.assignments.c.status).where(
                t.assignments.c.annotator_id == annotator_id, t.assignments.c.prompt_id == prompt_id
            )
        ).scalar()

    def _item_view(self, c: Connection, annotator_id: int, prompt_id: int, settings: Settings) -> ItemView:
        messages = c.execute(sa.select(t.prompts.c.messages).where(t.prompts.c.id == prompt_id)).scalar()
        if messages is None:
            raise NotFound(f"no prompt {prompt_id}")
        rows = c.execute(
            sa.select(t.candidates.c.id, t.candidates.c.text)
            .where(t.candidates.c.prompt_id == prompt_id)
            .order_by(t.candidates.c.id)
        ).all()
        candidates = shuffled_for(annotator_id, prompt_id, [{"id": r.id, "text": r.text} for r in rows])
        return ItemView(prompt_id=prompt_id, messages=messages, candidates=candidates, mode=settings.mode)

    def skip(self, annotator_id: int, prompt_id: int) -> None:
        """Discard an item for this annotator: it is not offered to them again and frees its slot."""
        with self._tx() as c:
            if c.execute(sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id)).scalar() is None:
                raise NotFound(f"no prompt {prompt_id}")
            status = self._assignment(c, annotator_id, prompt_id)
            if status == "submitted":
                raise Conflict(f"prompt {prompt_id}: already answered; edit the answer instead")
            self._set_assignment(c, annotator_id, prompt_id, "skipped", exists=status is not None)

    def _set_assignment(self, c: Connection, annotator_id: int, prompt_id: int, status: str, exists: bool) -> None:
        now = utcnow()
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

    # -- answers ------------------------------------------------------------------------------

    def _validated(
        self,
        c: Connection,
        prompt_id: int,
        thumbs: Mapping[int, bool] | None,
        ranks: Mapping[int, int] | None,
        comment: str | None,
        correction: str | None,
        corrected_candidate_id: int | None,
    ) -> dict[str, Any]:
        """The answer checked against its item and normalised (dense ranks, empty text as None)."""
        if c.execute(sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id)).scalar() is None:
            raise NotFound(f"no prompt {prompt_id}")
        candidate_ids = set(
            c.execute(sa.select(t.candidates.c.id).where(t.candidates.c.prompt_id == prompt_id)).scalars()
        )
        thumbs = {int(k): bool(v) for k, v in (thumbs or {}).items()}
        ranks = {int(k): int(v) for k, v in (ranks or {}).items()}
        comment = _normalise_text(comment, "comment")
        correction = _normalise_text(correction, "correction")
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
        if corrected_candidate_id is not None and corrected_candidate_id not in candidate_ids:
            raise Invalid(f"corrected_candidate_id: {corrected_candidate_id} is not a response to prompt {prompt_id}")
        if corrected_candidate_id is not None and correction is None:
            raise Invalid("corrected_candidate_id given without a correction")
        return {
            "thumbs": thumbs,
            "ranks": ranks,
            "comment": comment,
            "correction": correction,
            "corrected_candidate_id": corrected_candidate_id,
        }

    @staticmethod
    def _body_hash(prompt_id: int, answer: Mapping[str, Any]) -> str:
        body = {**answer, "prompt_id": prompt_id}
        body["thumbs"] = sorted(answer["thumbs"].items())
        body["ranks"] = sorted(answer["ranks"].items())
        return _sha256(_canonical(body))

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
    ) -> Receipt:
        """Record an annotator's answer to an item, exactly once per ``client_id``.

        A retry (same id, same body) returns the stored receipt with ``created=False``; the same
        id with a different body, or a second answer to the same item under a new id, is a
        :class:`Conflict` (answers are changed with :meth:`edit`). With ``require_assignment`` (the
        web app) only items handed to the annotator by :meth:`next_item` can be answered.
        """
        client_id = str(client_id)
        if not 8 <= len(client_id) <= 64:
            raise Invalid("client_id: 8 to 64 characters (a UUID is a good choice)")
        try:
            with self._tx() as c:
                answer = self._validated(c, prompt_id, thumbs, ranks, comment, correction, corrected_candidate_id)
                self._lock_prompt(c, prompt_id)  # before any read below: they then see the winner's commit
                body_hash = self._body_hash(prompt_id, answer)
                existing = c.execute(sa.select(t.submissions).where(t.submissions.c.id == client_id)).first()
                if existing is not None:
                    return self._replay(existing, annotator_id, prompt_id, body_hash)
                status = self._assignment(c, annotator_id, prompt_id)
                if require_assignment and status not in ("assigned", "submitted"):
                    raise Forbidden(f"prompt {prompt_id} was not handed to you; get items from the queue")
                other = c.execute(
                    sa.select(t.submissions.c.id).where(
                        t.submissions.c.annotator_id == annotator_id, t.submissions.c.prompt_id == prompt_id
                    )
                ).scalar()
                if other == client_id:  # a concurrent retry committed since the first look (READ COMMITTED)
                    existing = c.execute(sa.select(t.submissions).where(t.submissions.c.id == client_id)).first()
                    return self._replay(existing, annotator_id, prompt_id, body_hash)
                if other is not None:
                    raise Conflict(f"prompt {prompt_id}: already answered (answer {other}); edit that answer instead")
                self._check_room(c, prompt_id, status)
                now = utcnow()
                c.execute(
                    sa.insert(t.submissions).values(
                        id=client_id,
                        annotator_id=annotator_id,
                        prompt_id=prompt_id,
                        body_hash=body_hash,
                        comment=answer["comment"],
                        correction=answer["correction"],
                        corrected_candidate_id=answer["corrected_candidate_id"],
                        created_at=now,
                        updated_at=now,
                        revision=1,
                        sync_attempts=0,
                    )
                )
                self._write_values(c, client_id, answer)
                self._set_assignment(c, annotator_id, prompt_id, "submitted", exists=status is not None)
                return Receipt(client_id, prompt_id, created=True, revision=1)
        except sa.exc.IntegrityError:
            # A concurrent request committed first (PostgreSQL; SQLite serialises writers): either a
            # retry with the same id, or another answer by this annotator to the same item.
            with self._tx(write=False) as c:
                existing = c.execute(sa.select(t.submissions).where(t.submissions.c.id == client_id)).first()
                if existing is None:
                    raise Conflict(f"prompt {prompt_id}: already answered; edit that answer instead") from None
                answer = self._validated(c, prompt_id, thumbs, ranks, comment, correction, corrected_candidate_id)
            return self._replay(existing, annotator_id, prompt_id, self._body_hash(prompt_id, answer))

    @staticmethod
    def _lock_prompt(c: Connection, prompt_id: int) -> bool:
        """Serialise writers of one item on PostgreSQL (SQLite's write lock already does that).

        Returns whether the prompt exists.
        """
        locked = sa.select(t.prompts.c.id).where(t.prompts.c.id == prompt_id).with_for_update()
        return c.execute(locked).first() is not None

    def _check_room(self, c: Connection, prompt_id: int, status: str | None) -> None:
        """Refuse a new answer to an item that already has ``overlap`` answers (nothing is recorded).

        This is the late submit: an annotator's lease ran out (tab left open), the slot went to
        someone else and the item was completed by ``overlap`` other annotators. Accepting the
        answer would overfill the item. The caller holds the prompt's lock (:meth:`_lock_prompt`,
        as :meth:`next_item` does), so two late answers cannot both see one free slot.
        """
        overlap = self._settings(c).overlap
        answered = c.execute(
            sa.select(sa.func.count()).select_from(t.submissions).where(t.submissions.c.prompt_id == prompt_id)
        ).scalar_one()
        if answered < overlap:
            return
        if status == "assigned":
            raise Conflict(
                f"prompt {prompt_id}: your hold on this item expired and {answered} other annotator(s) "
                f"completed it meanwhile (overlap {overlap}); your answer was not recorded, take the next item"
            )
        raise Conflict(
            f"prompt {prompt_id}: the item is complete ({answered} answers, overlap {overlap}); "
            "your answer was not recorded"
        )

    @staticmethod
    def _replay(existing: Any, annotator_id: int, prompt_id: int, body_hash: str) -> Receipt:
        if existing.annotator_id != annotator_id or existing.prompt_id != prompt_id or existing.body_hash != body_hash:
            raise Conflict(f"client_id {existing.id!r} was already used for a different answer; use a new id")
        return Receipt(existing.id, existing.prompt_id, created=False, revision=existing.revision)

    def _write_values(self, c: Connection, submission_id: str, answer: Mapping[str, Any]) -> None:
        c.execute(sa.delete(t.ratings).where(t.ratings.c.submission_id == submission_id))
        c.execute(sa.delete(t.ranks).where(t.ranks.c.submission_id == submission_id))
        if answer["thumbs"]:
            c.execute(
                sa.insert(t.ratings),
                [{"submission_id": submission_id, "candidate_id": k, "up": v} for k, v in answer["thumbs"].items()],
            )
        if answer["ranks"]:
            c.execute(
                sa.insert(t.ranks),
                [{"submission_id": submission_id, "candidate_id": k, "rank": v} for k, v in answer["ranks"].items()],
            )

    def submit_ranking(
        self, annotator_id: int, prompt_id: int, ranks: Mapping[int, int], *, client_id: str, **extra: Any
    ) -> Receipt:
        """Rank every candidate of a prompt (1 is best, equal ranks are ties); see :meth:`submit`."""
        return self.submit(annotator_id, prompt_id, client_id=client_id, ranks=ranks, **extra)

    def submit_rating(
        self, annotator_id: int, prompt_id: int, thumbs: Mapping[int, bool], *, client_id: str, **extra: Any
    ) -> Receipt:
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
    ) -> Receipt:
        """Replace an annotator's own answer. Repeating the same edit changes nothing (no new revision).

        An edit is compare-and-set on the answer's revision: ``expected_revision`` is the revision the
        client based its change on (the page sends the one it loaded), and the UPDATE only applies
        while the stored revision is still the one read here. Two concurrent edits from the same
        base therefore cannot both succeed: on PostgreSQL the second UPDATE waits for the first's
        row lock, then matches no row; on SQLite writers are serialised and the second sees the new
        revision. The loser gets a :class:`Conflict` (409) instead of silently overwriting.
        """
        with self._tx() as c:
            row = c.execute(sa.select(t.submissions).where(t.submissions.c.id == submission_id)).first()
            if row is None or row.annotator_id != annotator_id:
                # Another annotator's answer is reported as missing: its existence is not theirs to know.
                raise NotFound(f"you have no answer {submission_id!r}")
            if expected_revision is not None and expected_revision != row.revision:
                raise Conflict(self._stale(submission_id, expected_revision, row.revision))
            answer = self._validated(c, row.prompt_id, thumbs, ranks, comment, correction, corrected_candidate_id)
            if self._body_hash(row.prompt_id, self._stored_answer(c, row)) == self._body_hash(row.prompt_id, answer):
                return Receipt(row.id, row.prompt_id, created=False, revision=row.revision)
            revision = row.revision + 1
            updated = c.execute(
                sa.update(t.submissions)
                .where(t.submissions.c.id == submission_id, t.submissions.c.revision == row.revision)
                .values(
                    comment=answer["comment"],
                    correction=answer["correction"],
                    corrected_candidate_id=answer["corrected_candidate_id"],
                    updated_at=utcnow(),
                    revision=revision,
                    sync_after=None,
                    sync_attempts=0,
                )
            )
            if updated.rowcount != 1:  # a concurrent edit committed since the read above
                current = c.execute(
                    sa.select(t.submissions.c.revision).where(t.submissions.c.id == submission_id)
                ).scalar()
                raise Conflict(self._stale(submission_id, row.revision, current))
            self._write_values(c, submission_id, answer)
            return Receipt(row.id, row.prompt_id, created=False, revision=revision)

    @staticmethod
    def _stale(submission_id: str, base: int, current: int | None) -> str:
        return (
            f"answer {submission_id!r} was changed meanwhile (your edit is based on revision {base}, "
            f"it is now at revision {current}); reload it and edit again"
        )

    def _values(
        self, c: Connection, submission_ids: list[str]
    ) -> tuple[dict[str, dict[int, bool]], dict[str, dict[int, int]]]:
        thumbs: dict[str, dict[int, bool]] = {s: {} for s in submission_ids}
        ranks: dict[str, dict[int, int]] = {s: {} for s in submission_ids}
        if submission_ids:
            for r in c.execute(sa.select(t.ratings).where(t.ratings.c.submission_id.in_(submission_ids))):
                thumbs[r.submission_id][r.candidate_id] = r.up
            for r in c.execute(sa.select(t.ranks).where(t.ranks.c.submission_id.in_(submission_ids))):
                ranks[r.submission_id][r.candidate_id] = r.rank
        return thumbs, ranks

    def _stored_answer(self, c: Connection, row: Any) -> dict[str, Any]:
        thumbs, ranks = self._values(c, [row.id])
        return _answer_fields(row, thumbs[row.id], ranks[row.id])

    def answer(self, annotator_id: int, submission_id: str) -> AnswerView:
        """One of this annotator's answers (another annotator's is reported as not found)."""
        with self._tx(write=False) as c:
            row = c.execute(sa.select(t.submissions).where(t.submissions.c.id == submission_id)).first()
            if row is None or row.annotator_id != annotator_id:
                raise NotFound(f"you have no answer {submission_id!r}")
            return _answer_view(row, self._stored_answer(c, row))

    def answers(self, annotator_id: int, limit: int = 50, offset: int = 0) -> list[AnswerView]:
        """This annotator's answers, newest first."""
        with self._tx(write=False) as c:
            rows = c.execute(
                sa.select(t.submissions)
                .where(t.submissions.c.annotator_id == annotator_id)
                .order_by(t.submissions.c.created_at.desc(), t.submissions.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
            thumbs, ranks = self._values(c, [r.id for r in rows])
            return [_answer_view(r, _answer_fields(r, thumbs[r.id], ranks[r.id])) for r in rows]

    # -- progress and records -------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        """Items total / complete / in progress / untouched, and answers per annotator."""
        with self._tx(write=False) as c:
            settings = self._settings(c)
            answered: dict[int, int] = dict(
                c.execute(sa.select(t.submissions.c.prompt_id, sa.func.count()).group_by(t.submissions.c.prompt_id))
                .tuples()
                .all()
            )
            total = c.execute(sa.select(sa.func.count()).select_from(t.prompts)).scalar_one()
            per_annotator = c.execute(
                sa.select(
                    t.annotators.c.id, t.annotators.c.name, t.annotators.c.role, sa.func.count(t.submissions.c.id)
                )
                .select_from(t.annotators.outerjoin(t.submissions, t.submissions.c.annotator_id == t.annotators.c.id))
                .group_by(t.annotators.c.id, t.annotators.c.name, t.annotators.c.role)
                .order_by(t.annotators.c.id)
            ).all()
            skipped: dict[int, int] = dict(
                c.execute(
                    sa.select(t.assignments.c.annotator_id, sa.func.count())
                    .where(t.assignments.c.status == "skipped")
                    .group_by(t.assignments.c.annotator_id)
                )
                .tuples()
                .all()
            )
        complete = sum(1 for n in answered.values() if n >= settings.overlap)
        return {
            "overlap": settings.overlap,
            "items": total,
            "complete": complete,
            "in_progress": len(answered) - complete,
            "untouched": total - len(answered),
            "answers": sum(answered.values()),
            "annotators": [
                {"name": name, "role": role, "answers": count, "skipped": skipped.get(annotator_id, 0)}
                for annotator_id, name, role, count in per_annotator
            ],
        }

    def annotator_progress(self, annotator_id: int) -> dict[str, int]:
        """This annotator's answers so far and how many items are still open to them."""
        with self._tx(write=False) as c:
            settings = self._settings(c)
            cutoff = utcnow() - dt.timedelta(minutes=settings.lease_minutes)
            done = c.execute(
                sa.select(sa.func.count())
                .select_from(t.submissions)
                .where(t.submissions.c.annotator_id == annotator_id)
            ).scalar_one()
            open_items = c.execute(
                sa.select(sa.func.count())
                .select_from(t.prompts)
                .where(self._open_prompts(c, annotator_id, settings, cutoff))
            ).scalar_one()
            held = c.execute(
                sa.select(sa.func.count())
                .select_from(t.assignments)
                .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.status == "assigned")
            ).scalar_one()
        return {"answered": done, "remaining": open_items + held}

    def records(self) -> list[records.Item]:
        """Every prompt with its candidates and all answers, for export and agreement (pure code)."""
        with self._tx(write=False) as c:
            prompt_rows = c.execute(sa.select(t.prompts.c.id, t.prompts.c.messages).order_by(t.prompts.c.id)).all()
            candidates: dict[int, list[records.Candidate]] = {p.id: [] for p in prompt_rows}
            for r in c.execute(sa.select(t.candidates).order_by(t.candidates.c.id)):
                candidates[r.prompt_id].append(records.Candidate(r.id, r.text, r.model))
            subs = c.execute(
                sa.select(t.submissions, t.annotators.c.name.label("annotator"))
                .join(t.annotators, t.annotators.c.id == t.submissions.c.annotator_id)
                .order_by(t.submissions.c.created_at, t.submissions.c.id)
            ).all()
            thumbs: dict[str, dict[int, bool]] = {s.id: {} for s in subs}
            ranks: dict[str, dict[int, int]] = {s.id: {} for s in subs}
            for r in c.execute(sa.select(t.ratings)):
                thumbs[r.submission_id][r.candidate_id] = r.up
            for r in c.execute(sa.select(t.ranks)):
                ranks[r.submission_id][r.candidate_id] = r.rank
        answers: dict[int, list[records.Answer]] = {p.id: [] for p in prompt_rows}
        for s in subs:
            answers[s.prompt_id].append(
                records.Answer(
                    annotator=s.annotator,
                    thumbs=thumbs[s.id],
                    ranks=ranks[s.id],
                    comment=s.comment,
                    correction=s.correction,
                    corrected_candidate_id=s.corrected_candidate_id,
                )
            )
        return [records.Item(p.id, p.messages, tuple(candidates[p.id]), tuple(answers[p.id])) for p in prompt_rows]

    def submission_ids(self) -> list[str]:
        """Every stored submission id (the load test counts them against what was acknowledged)."""
        with self._tx(write=False) as c:
            return list(c.execute(sa.select(t.submissions.c.id)).scalars())

    # -- LangSmith outbox ------------------------------------------------------------------------

    def _with_runs(self) -> Any:
        return sa.exists().where(
            t.candidates.c.prompt_id == t.submissions.c.prompt_id, t.candidates.c.langsmith_run_id.is_not(None)
        )

    def _unsynced(self) -> Any:
        return sa.and_(
            self._with_runs(),
            sa.or_(
                t.submissions.c.synced_revision.is_(None), t.submissions.c.synced_revision < t.submissions.c.revision
            ),
        )

    def pending_sync(self, limit: int = 100, now: dt.datetime | None = None) -> list[SyncJob]:
        """Submissions on candidates with LangSmith runs whose latest revision is not in LangSmith yet."""
        now = now or utcnow()
        with self._tx(write=False) as c:
            rows = c.execute(
                sa.select(t.submissions, t.annotators.c.name.label("annotator"))
                .join(t.annotators, t.annotators.c.id == t.submissions.c.annotator_id)
                .where(
                    self._unsynced(), sa.or_(t.submissions.c.sync_after.is_(None), t.submissions.c.sync_after <= now)
                )
                .order_by(t.submissions.c.updated_at)
                .limit(limit)
            ).all()
            thumbs, ranks = self._values(c, [r.id for r in rows])
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
                submission_id=r.id,
                revision=r.revision,
                annotator=r.annotator,
                annotator_id=r.annotator_id,
                prompt_id=r.prompt_id,
                thumbs=thumbs[r.id],
                ranks=ranks[r.id],
                comment=r.comment,
                correction=r.correction,
                corrected_candidate_id=r.corrected_candidate_id,
                runs=runs[r.prompt_id],
                attempts=r.sync_attempts,
                first_sync=r.synced_revision is None,
            )
            for r in rows
        ]

    def mark_synced(self, submission_id: str, revision: int) -> None:
        """Record that ``revision`` reached LangSmith (never moves back: a slow older pass cannot undo a newer one)."""
        with self._tx() as c:
            c.execute(
                sa.update(t.submissions)
                .where(
                    t.submissions.c.id == submission_id,
                    sa.or_(t.submissions.c.synced_revision.is_(None), t.submissions.c.synced_revision < revision),
                )
                .values(synced_revision=revision, sync_error=None, sync_attempts=0, sync_after=None)
            )

    def mark_sync_failed(self, submission_id: str, error: str, retry_at: dt.datetime) -> None:
        with self._tx() as c:
            c.execute(
                sa.update(t.submissions)
                .where(t.submissions.c.id == submission_id)
                .values(sync_error=error[:2000], sync_attempts=t.submissions.c.sync_attempts + 1, sync_after=retry_at)
            )

    def sync_status(self) -> dict[str, Any]:
        with self._tx(write=False) as c:
            pending = c.execute(
                sa.select(sa.func.count()).select_from(t.submissions).where(self._unsynced())
            ).scalar_one()
            failing = c.execute(
                sa.select(sa.func.count())
                .select_from(t.submissions)
                .where(self._unsynced(), t.submissions.c.sync_attempts > 0)
            ).scalar_one()
            synced = c.execute(
                sa.select(sa.func.count())
                .select_from(t.submissions)
                .where(t.submissions.c.synced_revision.is_not(None))
            ).scalar_one()
            last_error = c.execute(
                sa.select(t.submissions.c.sync_error)
                .where(t.submissions.c.sync_error.is_not(None))
                .order_by(t.submissions.c.updated_at.desc())
                .limit(1)
            ).scalar()
        return {"pending": pending, "failing": failing, "synced": synced, "last_error": last_error}
