"""Helpers every area of the store uses: the clock, hashes, canonical JSON, limits, enum and text checks, a lock."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback.store.errors import Invalid

MAX_TEXT = 20_000  # characters of a comment, a correction or the guidelines
MAX_INTEGER = 2**31 - 1  # INTEGER columns are 32-bit on PostgreSQL: past this, no id exists and no number fits
E = TypeVar("E", bound=StrEnum)
logger = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def serialise(c: Connection, what: str) -> None:
    """Make transactions that call this with the same ``what`` run one after another, from here to their commit.

    For checks a unique key cannot express (a login limit's count, a name that merely looks like
    another): on PostgreSQL, READ COMMITTED lets two transactions each check, see nothing of the
    other and both write. This takes a transaction-level advisory lock on a 64-bit hash of ``what``
    there (a collision only serialises two unrelated things). On SQLite a write transaction already
    holds the database's one write lock from ``BEGIN IMMEDIATE``.
    """
    if c.dialect.name == "postgresql":
        lock_id = int.from_bytes(hashlib.sha256(what.encode("utf-8")).digest()[:8], "big", signed=True)
        c.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def member(kind: type[E], value: object, name: str) -> E:
    """``value`` as a member of the enum ``kind``; :class:`Invalid` naming the choices otherwise."""
    for candidate in kind:
        if candidate == value:
            return candidate
    raise Invalid(f"{name}: expected one of {[str(m) for m in kind]}, got {value!r}")


def unencodable(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (a lone surrogate such as the JSON escape ``\\ud800``), or None.

    Python strings may hold surrogates that no UTF-8 byte sequence represents; JSON escapes and
    undecodable command-line bytes produce them. Stored, they break every later reader (the
    driver on write, the JSON encoder of every response that shows them), so they are refused
    where text enters the store.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"holds U+{ord(text[error.start]):04X} at character {error.start}, which UTF-8 cannot encode"
    return None


def checked_text(value: str, where: str) -> str:
    """``value`` if UTF-8 can encode it; :class:`Invalid` naming ``where`` otherwise."""
    problem = unencodable(value)
    if problem is not None:
        raise Invalid(f"{where}: {problem} (a lone surrogate); send valid Unicode text")
    return value


def json_problem(value: Any, where: str) -> str | None:
    """The first text inside a JSON value (keys included) that UTF-8 cannot encode, as ``where[...]: why``."""
    if isinstance(value, str):
        problem = unencodable(value)
        return f"{where}: {problem}" if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = json_problem(key, f"{where} key") or json_problem(item, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = json_problem(item, f"{where}[{index}]")
            if found:
                return found
    return None


def checked_json(value: Any, where: str) -> Any:
    """``value`` if every text in it is encodable; :class:`Invalid` naming the field otherwise."""
    problem = json_problem(value, where)
    if problem is not None:
        raise Invalid(f"{problem} (a lone surrogate); send valid Unicode text")
    return value


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def load_json(text: str | bytes) -> Any:
    """The engines' JSON reader: stored values with unencodable text come back escaped (``\\ud800`` as text).

    Such rows were stored before the checks existed (JSON columns keep ``\\ud800`` escapes on both
    backends); served raw, they would make every response that shows them fail. Escaping keeps the
    app answering; ``rlhf feedback doctor`` lists the rows to repair.
    """
    value = json.loads(text)
    problem = json_problem(value, "value")
    if problem is None:
        return value
    logger.warning("stored JSON %s; served escaped (rlhf feedback doctor lists such rows)", problem)
    return _escaped(value)
