"""Other layouts: rows as other toolkits write them, converted to the formats the stages read.

Alpaca's ``instruction``/``input``/``output``, ShareGPT's ``conversations`` of ``from``/``value`` turns
(LLaMA-Factory's and axolotl's names) and columns under other names (``--columns ours=theirs``) become
this toolkit's rows (:mod:`rlhf_core.rows`); every error names the user's own field, not ours.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlhf_core.errors import ConfigError
from rlhf_core.rows import Source, check_messages, check_text, named_as_theirs, raise_problems, validate

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
    problems += check_text(value, name)
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
        problems += check_messages(turns, "conversations", last=last)
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
            errors = [named_as_theirs(error, original) for error in errors]
        raise_problems(errors, kind)
        rows = converted
    conversion = Conversion(renamed, layout, mapped)
    validate(rows, kind, source, conversion.names())
    return rows, conversion
