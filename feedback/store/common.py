"""Small pure helpers every area of the store uses: the clock, hashes, canonical JSON, limits, enum checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from enum import StrEnum
from typing import Any, TypeVar

from feedback.store.errors import Invalid

MAX_TEXT = 20_000  # characters of a comment, a correction or the guidelines
E = TypeVar("E", bound=StrEnum)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def member(kind: type[E], value: object, name: str) -> E:
    """``value`` as a member of the enum ``kind``; :class:`Invalid` naming the choices otherwise."""
    for candidate in kind:
        if candidate == value:
            return candidate
    raise Invalid(f"{name}: expected one of {[str(m) for m in kind]}, got {value!r}")
