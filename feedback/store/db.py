"""Database setup: URLs, engines (SQLite pragmas), Alembic migrations, and the one way to open a transaction.

SQLite is the embedded default (a file, WAL journal, ``synchronous=FULL`` so an acknowledged
commit survives a crash or power loss); PostgreSQL is used by URL for teams
(``postgresql://user@host/db``, served by psycopg 3). The schema lives in :mod:`feedback.schema`
and is created and upgraded by the Alembic migrations shipped in ``feedback/migrations``
(:func:`migrate`, ``rlhf feedback migrate``, and automatically by ``Store.create`` and ``serve``).

A new SQLite database file is created readable and writable by its owner only (0600, whatever
the umask): it holds password hashes, annotators' names and their answers. SQLite gives its
``-wal`` and ``-shm`` files the same permissions. An existing file keeps the permissions it has.
JSON columns are read through :func:`feedback.store.common.load_json`, so a stored value with text
UTF-8 cannot encode is served escaped instead of failing every response that shows it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feedback.store.common import load_json
from feedback.store.errors import StoreError

MIGRATIONS = Path(__file__).parent.parent / "migrations"


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


def _create_private(url: str) -> None:
    """Create a missing SQLite file as 0600 before SQLite creates it with the umask's permissions."""
    path = sa.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        _create_private(url)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, json_deserializer=load_json
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(
        url, pool_size=10, max_overflow=30, pool_pre_ping=True, pool_timeout=60, json_deserializer=load_json
    )


def open_engine(url: str) -> Engine:
    """An engine on a database whose schema is at this version's head revision (:class:`StoreError` otherwise)."""
    engine = make_engine(url)
    current, head = current_revision(engine), head_revision()
    if current != head:
        engine.dispose()
        raise StoreError(
            f"{redact(url)}: database schema is at revision {current or 'none (empty database)'}, "
            f"this version needs {head}; run `rlhf feedback migrate --db URL`"
        )
    return engine


@contextlib.contextmanager
def transaction(engine: Engine, write: bool = True) -> Iterator[Connection]:
    """One transaction. A read (``write=False``) sees one consistent snapshot of the database.

    Reads run several statements (submissions, then their ratings and ranks): under
    PostgreSQL's default READ COMMITTED each statement has its own snapshot, so an export
    running while answers arrive could see a submission without its ratings, or ratings of a
    submission it did not see. Reads therefore run as REPEATABLE READ, READ ONLY (one snapshot
    for the whole transaction; a read-only one never fails to serialise). SQLite in WAL mode
    gives a read transaction one snapshot from its first read on. Writes stay READ COMMITTED
    and take locks (``BEGIN IMMEDIATE`` on SQLite, row locks on PostgreSQL).
    """
    queue = _writer_queue(engine) if write and engine.dialect.name == "sqlite" else contextlib.nullcontext()
    with queue, engine.connect() as connection:
        if write:
            connection.execution_options(immediate=True)
        elif engine.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with connection.begin():
            yield connection


_WRITER_QUEUES: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITER_QUEUES_LOCK = threading.Lock()


def _writer_queue(engine: Engine) -> threading.Lock:
    """The lock this process's SQLite writers queue on before ``BEGIN IMMEDIATE``.

    SQLite lets one writer in at a time either way; what this changes is how the others wait.
    Without it they wait in SQLite's busy handler, which sleeps and retries (up to 100 ms a
    sleep, first come not first served): under 32 concurrent annotators that made the slowest
    answers wait seconds while the median waited a tenth of one. Queued on a lock, a writer starts
    as soon as the one before it commits. Other processes (the CLI, a second server) still meet
    at SQLite's lock, with its busy timeout.
    """
    with _WRITER_QUEUES_LOCK:
        return _WRITER_QUEUES.setdefault(engine, threading.Lock())


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
