"""Finding stored text that UTF-8 cannot encode: rows written before the store refused such text.

JSON columns kept escapes such as ``\\ud800`` (a lone surrogate) on both backends, and an SQLite
text column may hold bytes that are not UTF-8 (written by another tool). The engines serve both
escaped (:func:`feedback.store.common.load_json`), so reading through them would hide the rows;
this module reads each text and JSON column raw instead: as bytes on SQLite, as text on PostgreSQL
(a UTF8 database holds only valid text columns), JSON parsed without repair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.store.common import json_problem, unencodable


@dataclass(frozen=True)
class EncodingProblem:
    """One stored value that UTF-8 cannot encode: where it is and why."""

    table: str
    row: str  # the primary key (several key columns joined by "/")
    column: str
    problem: str


def _raw(column: sa.Column[Any], dialect: str) -> Any:
    """A text column's stored form: bytes on SQLite (undecodable bytes survive), text on PostgreSQL."""
    if not isinstance(column.type, (sa.String, sa.JSON)):
        return column
    return sa.cast(column, sa.LargeBinary if dialect == "sqlite" else sa.Text)


def _shown(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _problem(raw: bytes | str, is_json: bool) -> str | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"byte {error.start} is not UTF-8 ({raw[error.start : error.start + 1]!r})"
    if not is_json:
        return unencodable(raw)
    return json_problem(json.loads(raw), "value")


def encoding_problems(c: Connection) -> list[EncodingProblem]:
    """Every stored text or JSON value that UTF-8 cannot encode, table by table."""
    dialect = c.dialect.name
    found = []
    for table in t.metadata.sorted_tables:
        key = [_raw(k, dialect) for k in table.primary_key.columns]
        for column in table.columns:
            if not isinstance(column.type, (sa.String, sa.JSON)):
                continue
            for *ids, raw in c.execute(sa.select(*key, _raw(column, dialect))):
                problem = _problem(raw, isinstance(column.type, sa.JSON)) if raw is not None else None
                if problem is not None:
                    found.append(EncodingProblem(table.name, "/".join(map(_shown, ids)), column.name, problem))
    return found
