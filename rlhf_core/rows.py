"""Rows: reading them from files, and checking them against the formats the stages read.

Every row is validated before anything uses it, so a bad row stops a run (or an import) with a
message like ``data.jsonl: line 12: 'chosen': identical to 'rejected'`` instead of a shape error deep
inside a trainer or a half-stored import. The checks are pure functions over rows; each returns the
problems it found.

Formats (``kind``): ``sft`` (``messages``, ``prompt`` + ``completion``, or ``text``), ``preference``
(``prompt`` optional, ``chosen``, ``rejected``, optional ``margin``), ``unpaired`` (``prompt``,
``completion``, ``label``) and ``prompt``. Rows in the layouts other toolkits use (Alpaca's
``instruction``/``input``/``output``, ShareGPT's ``conversations`` of ``from``/``value`` turns) and
columns under other names are converted to these by :func:`convert`, which names the user's own
fields in its errors.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_core.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 5
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Source:
    """Where rows came from, to name them in errors: a file and, for JSONL, each row's line."""

    name: str
    lines: list[int] | None = None

    def at(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.name}: line {self.lines[index]}"
        return f"{self.name}: row {index + 1}"


# ----------------------------------------------------------------------------------------------
# Reading files


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


def _check_text(value: Any, field: str) -> list[str]:
    if not isinstance(value, str):
        return [f"'{field}': expected text, got {type(value).__name__}"]
    if not value.strip():
        return [f"'{field}': empty"]
    return []


def _check_messages(value: Any, field: str, *, last: str | None = None, only: str | None = None) -> list[str]:
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
        problems = _check_messages(row["messages"], "messages", last="assistant")
        if not problems and not any(m["role"] == "assistant" for m in row["messages"]):
            problems.append("'messages': no assistant turn to learn from")
        return problems
    if "prompt" in row and "completion" in row:
        if is_messages(row["prompt"]) or is_messages(row["completion"]):
            return _check_messages(row["prompt"], "prompt", last="user") + _check_messages(
                row["completion"], "completion", only="assistant"
            )
        return _check_text(row["prompt"], "prompt") + _check_text(row["completion"], "completion")
    if "text" in row:
        return _check_text(row["text"], "text")
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
            problems += _check_messages(row["prompt"], "prompt", last="user")
            problems += _check_messages(row["chosen"], "chosen", only="assistant")
            problems += _check_messages(row["rejected"], "rejected", only="assistant")
        else:
            problems += _check_messages(row["chosen"], "chosen", last="assistant")
            problems += _check_messages(row["rejected"], "rejected", last="assistant")
    else:
        if "prompt" in row and row["prompt"] is not None:
            problems += _check_text(row["prompt"], "prompt")
        problems += _check_text(row["chosen"], "chosen") + _check_text(row["rejected"], "rejected")
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
        return _check_messages(row["prompt"], "prompt", last="user")
    return _check_text(row["prompt"], "prompt")


def _check_unpaired_row(row: dict[str, Any]) -> list[str]:
    """KTO's rows: a prompt, one completion and whether it is desirable (a thumbs up)."""
    if "chosen" in row and "rejected" in row:
        return [PAIRS_NOT_THUMBS]
    missing = [c for c in ("prompt", "completion", "label") if c not in row]
    if missing:
        return [f"missing column(s) {missing} (found {sorted(row)})"]
    problems: list[str] = []
    if is_messages(row["prompt"]) or is_messages(row["completion"]):
        problems += _check_messages(row["prompt"], "prompt", last="user")
        problems += _check_messages(row["completion"], "completion", only="assistant")
    else:
        problems += _check_text(row["prompt"], "prompt") + _check_text(row["completion"], "completion")
    if not isinstance(row["label"], bool):
        problems.append(f"'label': expected true (desirable) or false, got {row['label']!r}")
    return problems


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "sft": _check_sft_row,
    "preference": _check_preference_row,
    "unpaired": _check_unpaired_row,
    "prompt": _check_prompt_row,
}


def _named(problem: str, names: dict[str, str]) -> str:
    """A problem with each converted column named as the user's data names it (``'prompt'`` -> ``'instruction'``)."""
    for ours, theirs in names.items():
        problem = problem.replace(f"'{ours}'", theirs)
    return problem


def _raise(errors: list[str], kind: str) -> None:
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
            errors.append(f"{source.at(index)}: {_named(problem, names or {})}")
        if kind == "preference" and "chosen" in row:
            formats.add("conversational" if is_messages(row["chosen"]) else "text")
    if count == 0:
        raise DataError(f"{source.name}: no rows")
    if len(formats) > 1:
        errors.append(f"{source.name}: mixes conversational and plain-text rows; use one format")
    _raise(errors, kind)


# ----------------------------------------------------------------------------------------------
# Other layouts: columns under other names, Alpaca and ShareGPT rows


# Columns a row may hold, as this toolkit's formats and the layouts it converts name them.
COLUMNS = (
    *("messages", "prompt", "completion", "text", "chosen", "rejected", "margin", "label"),
    *("instruction", "input", "output", "system", "history", "conversations", "kto_tag"),
)
# ShareGPT's speakers (LLaMA-Factory's and axolotl's names, and the chat roles) as chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_columns(items: Iterable[str]) -> dict[str, str]:
    """``["chosen=better,rejected=worse"]`` (items, each possibly comma-separated) as ``{ours: theirs}``."""
    columns: dict[str, str] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            ours, equals, theirs = (part.strip() for part in pair.partition("="))
            if not equals or not ours or not theirs:
                raise ConfigError(f"columns: {pair!r} is not COLUMN=NAME (e.g. chosen=better: read 'better' as chosen)")
            if ours not in COLUMNS:
                close = difflib.get_close_matches(ours, COLUMNS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {list(COLUMNS)}"
                raise ConfigError(f"columns: {ours!r} is not a column this toolkit reads{hint}")
            if ours in columns:
                raise ConfigError(f"columns: {ours!r} is mapped twice")
            columns[ours] = theirs
    return columns


def _is_turns(value: Any) -> bool:
    """A ShareGPT turn or list of turns (``from``/``value``), as a preference answer may hold."""
    turns = value if isinstance(value, list) else [value]
    return bool(turns) and all(isinstance(t, dict) and "from" in t and "value" in t for t in turns)


def detect_format(row: dict[str, Any], kind: str) -> str | None:
    """``alpaca``, ``sharegpt``, or ``None`` (this toolkit's own format, or one it does not know), from a row."""
    if "conversations" in row or (kind == "preference" and any(_is_turns(row.get(c)) for c in ("chosen", "rejected"))):
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    return None


def _text(row: dict[str, Any], name: str, problems: list[str], optional: bool = False) -> str:
    """A text field of the user's row (problems named by the field); an optional one may be missing or empty."""
    value = row.get(name)
    if value is None or (optional and value == ""):
        if not optional:
            problems.append(f"'{name}': missing (found {sorted(row)})")
        return ""
    problems += _check_text(value, name)
    return value if isinstance(value, str) else ""


def _label(row: dict[str, Any], problems: list[str]) -> Any:
    """KTO's label: ``label``, or LLaMA-Factory's ``kto_tag``."""
    if "label" in row:
        return row["label"]
    if "kto_tag" not in row:
        problems.append(f"'kto_tag': missing, and no 'label' (found {sorted(row)})")
    return row.get("kto_tag")


def _alpaca(row: dict[str, Any], kind: str) -> tuple[dict[str, Any], list[str]]:
    """Alpaca: ``instruction`` (+ ``input``) is the user turn, after ``system`` and ``history`` ([[q, a], ...])."""
    problems: list[str] = []
    question = _text(row, "instruction", problems)
    extra = _text(row, "input", problems, optional=True)
    system = _text(row, "system", problems, optional=True)
    turns = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(t, str) and t.strip() for t in h) for h in history
    ):
        problems.append("'history': expected a list of [question, answer] text pairs")
        history = []
    for asked, answered in history:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    turns.append({"role": "user", "content": f"{question}\n\n{extra}" if extra.strip() else question})
    out: dict[str, Any] = {"prompt": turns}
    if kind in ("sft", "unpaired"):
        out["completion"] = [{"role": "assistant", "content": _text(row, "output", problems)}]
    if kind == "unpaired":
        out["label"] = _label(row, problems)
    if kind == "preference":
        for side in ("chosen", "rejected"):
            out[side] = [{"role": "assistant", "content": _text(row, side, problems)}]
        if "margin" in row:
            out["margin"] = row["margin"]
    return out, problems


def _turns(value: Any, name: str, problems: list[str]) -> list[dict[str, str]]:
    """ShareGPT turns (``from``/``value``, or already ``role``/``content``) as chat messages."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        problems.append(f"'{name}': expected a non-empty list of {{from, value}} turns")
        return []
    messages = []
    for i, turn in enumerate(items):
        where = f"'{name}'[{i}]" if isinstance(value, list) else f"'{name}'"
        if not isinstance(turn, dict):
            problems.append(f"{where}: expected a {{from, value}} turn, got {type(turn).__name__}")
            continue
        speaker = turn.get("from", turn.get("role"))
        if speaker not in SHAREGPT_ROLES:
            problems.append(
                f"{where}: 'from' {speaker!r} is not one of {sorted(SHAREGPT_ROLES)} (tool turns are not read)"
            )
            continue
        content = turn.get("value", turn.get("content"))
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{where}: empty or missing 'value'")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": content if isinstance(content, str) else ""})
    return messages


def _sharegpt(row: dict[str, Any], kind: str) -> tuple[dict[str, Any], list[str]]:
    """ShareGPT: ``conversations`` (and an optional ``system`` column); for pairs, ``chosen``/``rejected`` turns."""
    problems: list[str] = []
    system = _text(row, "system", problems, optional=True)
    lead = [{"role": "system", "content": system}] if system else []
    out: dict[str, Any] = {}
    has_prompt = "conversations" in row
    turns = _turns(row.get("conversations"), "conversations", problems) if has_prompt else []
    if has_prompt and not problems:  # checked here, where the indices are the user's (the system column comes first)
        last = "assistant" if kind in ("sft", "unpaired") else "user"
        problems += _check_messages(turns, "conversations", last=last)
        if lead and turns and turns[0]["role"] == "system":
            problems.append("'system': a system column and a system turn in 'conversations'; keep one")
    if kind == "sft":
        out["messages"] = lead + turns
    elif kind == "prompt":
        out["prompt"] = lead + turns
    elif kind == "unpaired":
        out["prompt"], out["completion"] = lead + turns[:-1], turns[-1:]
        out["label"] = _label(row, problems)
    else:
        if has_prompt:
            out["prompt"] = lead + turns
        for side in ("chosen", "rejected"):
            answer = _turns(row.get(side), side, problems)
            out[side] = answer if has_prompt else lead + answer
        if "margin" in row:
            out["margin"] = row["margin"]
    return out, problems


CONVERTERS: dict[str, Callable[[dict[str, Any], str], tuple[dict[str, Any], list[str]]]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}

# What each layout's fields become, per kind: (their fields, our column); described, and used to name errors.
_PROMPT = (("system", "prompt"), ("history", "prompt"), ("instruction+input", "prompt"))
_PAIR = (("chosen", "chosen"), ("rejected", "rejected"))
MAPPED: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("alpaca", "sft"): (*_PROMPT, ("output", "completion")),
    ("alpaca", "preference"): (*_PROMPT, *_PAIR),
    ("alpaca", "unpaired"): (*_PROMPT, ("output", "completion"), ("kto_tag", "label")),
    ("alpaca", "prompt"): _PROMPT,
    ("sharegpt", "sft"): (("system", "messages"), ("conversations", "messages")),
    ("sharegpt", "preference"): (("system", "prompt"), ("conversations", "prompt"), *_PAIR),
    ("sharegpt", "unpaired"): (("system", "prompt"), ("conversations", "prompt+completion"), ("kto_tag", "label")),
    ("sharegpt", "prompt"): (("system", "prompt"), ("conversations", "prompt")),
}


def _mapped(layout: str, kind: str, present: set[str]) -> tuple[tuple[str, str], ...]:
    """The layout's mapping, limited to the fields the rows have (``instruction`` alone when no row has ``input``)."""
    out = []
    for theirs, ours in MAPPED[(layout, kind)]:
        fields = [f for f in theirs.split("+") if f in present]
        if fields:
            out.append(("+".join(fields), ours))
    return tuple(out)


@dataclass(frozen=True)
class Conversion:
    """How a dataset's rows were read: columns renamed (``--columns``), a layout converted, or neither."""

    renamed: tuple[tuple[str, str], ...] = ()  # (their column, our column)
    layout: str | None = None  # "alpaca", "sharegpt"
    mapped: tuple[tuple[str, str], ...] = ()  # (their fields, our column)

    def describe(self) -> str:
        """E.g. ``alpaca format: instruction+input -> prompt, output -> completion``; empty when read as is."""
        parts = []
        if self.renamed:
            parts.append("columns: " + ", ".join(f"{theirs} -> {ours}" for theirs, ours in self.renamed))
        if self.layout:
            pairs = ", ".join(f"{theirs} -> {ours}" for theirs, ours in self.mapped)
            roles = " (from: human -> user, gpt -> assistant)" if self.layout == "sharegpt" else ""
            parts.append(f"{self.layout} format: {pairs}{roles}")
        return "; ".join(parts)

    def names(self) -> dict[str, str]:
        """How to name each of our columns in a problem: the user's field it came from."""
        original = {ours: theirs for theirs, ours in self.renamed}
        names = {}
        for theirs, columns in self.mapped:  # the main field comes last and wins: instruction over system
            for ours in columns.split("+"):
                if theirs != ours:
                    names[ours] = theirs.split("+")[0]
        out = {}
        for ours in {*names, *original}:
            field = names.get(ours, ours)
            field = original.get(field, field)
            if field != ours:
                out[ours] = f"'{field}' (as {ours})"
        return out


def convert(
    rows: list[dict[str, Any]], kind: str, source: Source, columns: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], Conversion]:
    """Rows renamed by ``columns`` ({ours: theirs}) and converted from Alpaca or ShareGPT, then validated.

    Every problem names the file, row and the user's own field (``'output': empty``, ``'better' (as
    chosen): ...``), as :func:`validate` does for rows in this toolkit's formats.
    """
    renamed = tuple((theirs, ours) for ours, theirs in (columns or {}).items())
    if renamed:
        rows = [
            {**{k: v for k, v in row.items() if k not in dict(renamed)}, **{o: row[t] for t, o in renamed if t in row}}
            for row in rows
        ]
    layout = detect_format(rows[0], kind) if rows else None
    mapped: tuple[tuple[str, str], ...] = ()
    if layout is not None:
        mapped = _mapped(layout, kind, {key for row in rows for key in row})
        errors: list[str] = []
        converted = []
        for index, row in enumerate(rows):
            out, problems = CONVERTERS[layout](row, kind)
            errors += [f"{source.at(index)}: {problem}" for problem in problems]
            converted.append(out)
        if renamed:
            original = {ours: f"'{theirs}' (as {ours})" for theirs, ours in renamed}
            errors = [_named(error, original) for error in errors]
        _raise(errors, kind)
        rows = converted
    conversion = Conversion(renamed, layout, mapped)
    validate(rows, kind, source, conversion.names())
    return rows, conversion
