"""Rows: reading them from files, and checking them against the formats the stages read.

Every row is validated before anything uses it, so a bad row stops a run (or an import) with a
message like ``data.jsonl: line 12: 'chosen': identical to 'rejected'`` instead of a shape error deep
inside a trainer or a half-stored import. The checks are pure functions over rows; each returns the
problems it found.

Formats (``kind``): ``sft`` (``messages``, ``prompt`` + ``completion``, or ``text``), ``preference``
(``prompt`` optional, ``chosen``, ``rejected``, optional ``margin``), ``unpaired`` (``prompt``,
``completion``, ``label``) and ``prompt``. Rows in the layouts other toolkits use (Alpaca's
``instruction``/``input``/``output``, ShareGPT's ``conversations`` of ``from``/``value`` turns) and
columns under other names are converted to these by :func:`rlhf_core.convert.convert`, which names the user's own
fields in its errors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_core.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 5
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")


# ----------------------------------------------------------------------------------------------
# Reading files


@dataclass(frozen=True)
class Source:
    """Where rows came from, to name them in errors: a file and, for JSONL, each row's line."""

    name: str
    lines: list[int] | None = None

    def at(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.name}: line {self.lines[index]}"
        return f"{self.name}: row {index + 1}"


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    rows, lines = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            lines.append(number)
    return rows, lines


def _decode_json_cells(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cannot hold lists: conversational columns may be JSON-encoded strings."""
    out = dict(row)
    for key, value in row.items():
        if (
            isinstance(value, str)
            and value.lstrip().startswith("[")
            and key in ("messages", "prompt", "chosen", "rejected", "completion", "conversations", "history")
        ):
            with contextlib.suppress(json.JSONDecodeError):  # plain text that starts with "[" stays text
                out[key] = json.loads(value)
    return out


def read_file(path: Path) -> tuple[list[dict[str, Any]], Source]:
    """The rows of a .jsonl, .json, .csv or .parquet file, and where each came from."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, lines = _read_jsonl(path)
        return rows, Source(str(path), lines)
    if suffix == ".json":
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from error
        if isinstance(payload, dict) and "data" in payload:
            payload = payload["data"]
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return payload, Source(str(path))
    if suffix in (".csv", ".parquet"):
        import datasets  # pyarrow and pandas, only for the formats that need them: the web app stays light

        loaded = datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
        rows = [_decode_json_cells(r) for r in loaded] if suffix == ".csv" else loaded.to_list()
        return rows, Source(str(path))
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def split_files(folder: Path) -> dict[str, Path]:
    """A folder's row files by split name (``train.jsonl`` -> ``train``)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in FILE_TYPES and path.stem not in files:
            files[path.stem] = path
    return files


# ----------------------------------------------------------------------------------------------
# Validation


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def check_text(value: Any, field: str) -> list[str]:
    if not isinstance(value, str):
        return [f"'{field}': expected text, got {type(value).__name__}"]
    if not value.strip():
        return [f"'{field}': empty"]
    return []


def check_messages(value: Any, field: str, *, last: str | None = None, only: str | None = None) -> list[str]:
    """Roles known, contents non-empty, turns alternating (system first, then user/assistant)."""
    if not is_messages(value):
        return [f"'{field}': expected a non-empty list of {{role, content}} messages"]
    problems = []
    previous = None
    for i, message in enumerate(value):
        role, content = message.get("role"), message.get("content")
        where = f"'{field}'[{i}]"
        if role not in ROLES:
            problems.append(f"{where}: role {role!r} is not one of {list(ROLES)}")
            continue
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{where}: empty or missing 'content'")
        if only is not None and role != only:
            problems.append(f"{where}: role {role!r}, expected {only!r}")
        elif role == "system" and i != 0:
            problems.append(f"{where}: a system message may only come first")
        elif role != "system" and role == previous:
            problems.append(f"{where}: two {role!r} turns in a row")
        previous = role
    if last is not None and not problems and value[-1].get("role") != last:
        problems.append(f"'{field}': last message has role {value[-1].get('role')!r}, expected {last!r}")
    return problems


def _check_sft_row(row: dict[str, Any]) -> list[str]:
    if "messages" in row:
        problems = check_messages(row["messages"], "messages", last="assistant")
        if not problems and not any(m["role"] == "assistant" for m in row["messages"]):
            problems.append("'messages': no assistant turn to learn from")
        return problems
    if "prompt" in row and "completion" in row:
        if is_messages(row["prompt"]) or is_messages(row["completion"]):
            return check_messages(row["prompt"], "prompt", last="user") + check_messages(
                row["completion"], "completion", only="assistant"
            )
        return check_text(row["prompt"], "prompt") + check_text(row["completion"], "completion")
    if "text" in row:
        return check_text(row["text"], "text")
    return [f"no 'messages', 'prompt'+'completion' or 'text' column (found {sorted(row)})"]


# A row of the other preference format: which export (and stage) to use instead.
PAIRS_NOT_THUMBS = (
    "this is preference-pair data (prompt/chosen/rejected), which `rlhf reward` and `rlhf dpo` train on; "
    "KTO takes thumbs: `rlhf feedback export --format kto`"
)


THUMBS_NOT_PAIRS = (
    "this is thumbs data (prompt/completion/label) for `rlhf kto`; pairs come from "
    "`rlhf feedback export --format pairs`"
)


def _check_preference_row(row: dict[str, Any]) -> list[str]:
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing and "label" in row and "completion" in row:
        return [THUMBS_NOT_PAIRS]
    if missing:
        return [f"missing column(s) {missing} (found {sorted(row)})"]
    conversational = is_messages(row["chosen"]) or is_messages(row["rejected"])
    problems: list[str] = []
    if conversational:
        if "prompt" in row and row["prompt"] is not None:
            problems += check_messages(row["prompt"], "prompt", last="user")
            problems += check_messages(row["chosen"], "chosen", only="assistant")
            problems += check_messages(row["rejected"], "rejected", only="assistant")
        else:
            problems += check_messages(row["chosen"], "chosen", last="assistant")
            problems += check_messages(row["rejected"], "rejected", last="assistant")
    else:
        if "prompt" in row and row["prompt"] is not None:
            problems += check_text(row["prompt"], "prompt")
        problems += check_text(row["chosen"], "chosen") + check_text(row["rejected"], "rejected")
    if not problems and row["chosen"] == row["rejected"]:
        problems.append("'chosen': identical to 'rejected', so there is no preference to learn")
    margin = row.get("margin")
    if margin is not None and (not isinstance(margin, (int, float)) or not math.isfinite(margin)):
        problems.append(f"'margin': expected a finite number, got {margin!r}")
    return problems


def _check_prompt_row(row: dict[str, Any]) -> list[str]:
    if "prompt" not in row:
        return [f"missing column 'prompt' (found {sorted(row)})"]
    if is_messages(row["prompt"]):
        return check_messages(row["prompt"], "prompt", last="user")
    return check_text(row["prompt"], "prompt")


def _check_unpaired_row(row: dict[str, Any]) -> list[str]:
    """KTO's rows: a prompt, one completion and whether it is desirable (a thumbs up)."""
    if "chosen" in row and "rejected" in row:
        return [PAIRS_NOT_THUMBS]
    missing = [c for c in ("prompt", "completion", "label") if c not in row]
    if missing:
        return [f"missing column(s) {missing} (found {sorted(row)})"]
    problems: list[str] = []
    if is_messages(row["prompt"]) or is_messages(row["completion"]):
        problems += check_messages(row["prompt"], "prompt", last="user")
        problems += check_messages(row["completion"], "completion", only="assistant")
    else:
        problems += check_text(row["prompt"], "prompt") + check_text(row["completion"], "completion")
    if not isinstance(row["label"], bool):
        problems.append(f"'label': expected true (desirable) or false, got {row['label']!r}")
    return problems


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "sft": _check_sft_row,
    "preference": _check_preference_row,
    "unpaired": _check_unpaired_row,
    "prompt": _check_prompt_row,
}


def named_as_theirs(problem: str, names: dict[str, str]) -> str:
    """A problem with each converted column named as the user's data names it (``'prompt'`` -> ``'instruction'``)."""
    for ours, theirs in names.items():
        problem = problem.replace(f"'{ours}'", theirs)
    return problem


def raise_problems(errors: list[str], kind: str) -> None:
    """One DataError listing the first problems found (and how many more), or nothing when there are none."""
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} problem(s) in {kind} data:\n  {shown}{more}")


def validate(rows: Iterable[dict[str, Any]], kind: str, source: Source, names: dict[str, str] | None = None) -> None:
    """Raise :class:`DataError` listing the first problems (file, row, field) of a dataset.

    ``names``: for converted rows, how to name each of our columns in a problem (the user's field).
    """
    check = CHECKS[kind]
    errors: list[str] = []
    count = 0
    formats: set[str] = set()
    for index, row in enumerate(rows):
        count += 1
        for problem in check(row):
            if problem in (PAIRS_NOT_THUMBS, THUMBS_NOT_PAIRS):  # the whole file is of the other format
                raise DataError(f"{source.name}: {problem}")
            errors.append(f"{source.at(index)}: {named_as_theirs(problem, names or {})}")
        if kind == "preference" and "chosen" in row:
            formats.add("conversational" if is_messages(row["chosen"]) else "text")
    if count == 0:
        raise DataError(f"{source.name}: no rows")
    if len(formats) > 1:
        errors.append(f"{source.name}: mixes conversational and plain-text rows; use one format")
    raise_problems(errors, kind)
