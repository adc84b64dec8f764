"""Getting work in: prompts and candidates from JSONL (or JSON/CSV/Parquet) files and from LangSmith runs.

File rows (one item per row; ``candidates`` may be left out for prompts that ``rlhf feedback
generate`` will answer)::

    {"id": "q-17", "prompt": "What is 3 plus 4?", "candidates": ["3 plus 4 is 7.", {"text": "...", "model": "m"}]}
    {"prompt": [{"role": "user", "content": "What is 3 plus 4?"}]}

A candidate is text, or an object with ``text`` and optionally ``model``, ``adapter``,
``generation`` (the settings that produced it), ``run_id`` and ``session_id`` (its LangSmith run
and project, so ratings are sent back to that run). Every row is checked before anything is
stored, and errors name the file, line and field, as ``rlhf data check`` does; an import is one
transaction, so a bad file stores nothing. Importing a file twice adds nothing the second time.

LangSmith runs (``list_runs``) become candidates of the prompt their inputs hold; runs with the
same prompt are grouped into one item. Inputs and outputs come in several shapes (chat messages,
LangChain-serialised messages, ``prompt``/``input``/``question`` text, ``generations``,
OpenAI-style ``choices``); :func:`run_prompt` and :func:`run_output` read the common ones.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from feedback.records import prompt_messages
from feedback.store import ImportReport, Invalid, Store, unencodable
from feedback.store.common import json_problem
from rlhf_core.errors import DataError
from rlhf_core.rows import Source, read_file, validate

CANDIDATE_KEYS = {"text", "model", "adapter", "generation", "run_id", "session_id"}
ROW_KEYS = {"id", "prompt", "candidates"}
# Limits follow the columns (feedback.schema): a value over them would fail in the database (on
# PostgreSQL; SQLite stores anything) with an error naming no row, so each row is checked first.
MAX_ID_CHARS = 200  # prompts.external_id
MAX_NAME_CHARS = 500  # candidates.model / adapter
MAX_TEXT_CHARS = 100_000  # a prompt message or a response: far more than anyone reads
MAX_CANDIDATES = 100


def _text_problems(value: Any, where: str, limit: int, *, required: bool) -> list[str]:
    """Type, length, NUL characters (PostgreSQL text cannot hold them) and code points UTF-8 cannot encode
    (lone surrogates, e.g. a ``\\ud800`` escape in a JSON file) of one text field."""
    if value is None and not required:
        return []
    if not isinstance(value, str) or (required and not value.strip()):
        return [f"{where}: expected {'non-empty ' if required else ''}text, got {type(value).__name__}"]
    if len(value) > limit:
        return [f"{where}: {len(value)} characters, at most {limit}"]
    if "\x00" in value:
        return [f"{where}: contains a NUL (\\u0000) character"]
    problem = unencodable(value)
    return [f"{where}: {problem} (a lone surrogate)"] if problem else []


def _prompt_problems(prompt: Any, where: str) -> list[str]:
    # The prompt's shape was checked by rlhf_core.rows.validate; here its texts.
    if isinstance(prompt, str):
        return _text_problems(prompt, where, MAX_TEXT_CHARS, required=True)
    if not isinstance(prompt, list):
        return []
    problems = []
    for i, message in enumerate(prompt):
        content = message.get("content") if isinstance(message, Mapping) else None
        problems += _text_problems(content, f"{where}[{i}].content", MAX_TEXT_CHARS, required=False)
    return problems


def _id_problems(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return [f"{where}: expected text or a whole number, got {type(value).__name__}"]
    return _text_problems(str(value), where, MAX_ID_CHARS, required=True)


def _candidate_problems(candidate: Any, where: str) -> list[str]:
    if isinstance(candidate, str):
        return _text_problems(candidate, where, MAX_TEXT_CHARS, required=True)
    if not isinstance(candidate, Mapping):
        return [f"{where}: expected text or an object with 'text', got {type(candidate).__name__}"]
    problems = []
    unknown = sorted(set(candidate) - CANDIDATE_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; known: {sorted(CANDIDATE_KEYS)}")
    problems += _text_problems(candidate.get("text"), f"{where}.text", MAX_TEXT_CHARS, required=True)
    for key in ("model", "adapter"):
        problems += _text_problems(candidate.get(key), f"{where}.{key}", MAX_NAME_CHARS, required=False)
    for key in ("run_id", "session_id"):
        value = candidate.get(key)
        if value is None:
            continue
        try:
            uuid.UUID(str(value))
        except ValueError:
            problems.append(f"{where}.{key}: expected a LangSmith id (a UUID), got {str(value)[:50]!r}")
    generation = candidate.get("generation")
    if generation is not None:
        if not isinstance(generation, Mapping):
            problems.append(f"{where}.generation: expected an object of generation settings")
        elif "\\u0000" in json.dumps(generation, default=str):
            problems.append(f"{where}.generation: contains a NUL (\\u0000) character")
        elif problem := json_problem(generation, f"{where}.generation"):
            problems.append(f"{problem} (a lone surrogate)")
    return problems


def validate_rows(rows: Sequence[Mapping[str, Any]], source: Any) -> None:
    """Raise :class:`DataError` naming file, line and field of every bad row (the first few)."""
    validate(rows, "prompt", source)  # the prompt column, exactly as the stages check prompts
    errors = []
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - ROW_KEYS)
        if unknown:
            errors.append(f"{source.at(index)}: unknown column(s) {unknown}; known: {sorted(ROW_KEYS)}")
        errors += [f"{source.at(index)}: {p}" for p in _id_problems(row.get("id"), "'id'")]
        errors += [f"{source.at(index)}: {p}" for p in _prompt_problems(row.get("prompt"), "'prompt'")]
        candidates = row.get("candidates")
        if candidates is None:
            continue
        if not isinstance(candidates, list) or len(candidates) > MAX_CANDIDATES:
            errors.append(f"{source.at(index)}: 'candidates': expected a list of at most {MAX_CANDIDATES}")
            continue
        for i, candidate in enumerate(candidates):
            errors += [f"{source.at(index)}: {p}" for p in _candidate_problems(candidate, f"'candidates'[{i}]")]
    if errors:
        shown = "\n  ".join(errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise DataError(f"{len(errors)} problem(s) in import data:\n  {shown}{more}")


def normalise_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated rows as the store takes them: prompt as messages, id as text."""
    return [
        {
            "prompt": prompt_messages(row["prompt"]),
            "id": str(row["id"]) if row.get("id") is not None else None,
            "candidates": list(row.get("candidates") or []),
        }
        for row in rows
    ]


def _not_utf8(path: Path) -> str | None:
    """Where a text file stops being UTF-8 (line and byte of the line), or None.

    Checked before a CSV goes to ``datasets``, whose reader fails on such bytes with a generation
    error that names neither the file nor the line.
    """
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"line {number}: byte {error.start + 1} of the line is not UTF-8 ({line[error.start : error.end]!r})"
    return None


def read_rows(path: str) -> tuple[list[dict[str, Any]], Source]:
    """The rows of an import file, or :class:`DataError` naming the file (and line, where one is to blame)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such file")
    if file.suffix.lower() in (".csv", ".jsonl", ".json") and (where := _not_utf8(file)):
        raise DataError(f"{path}: {where}; save the file as UTF-8")
    try:
        return read_file(file)
    except DataError:
        raise
    except Exception as error:  # the CSV / Parquet readers' own errors (pyarrow, datasets): the cause's first line
        cause = error.__cause__ or error
        reason = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        raise DataError(f"{path}: cannot read it as {file.suffix.lower()[1:]} ({reason})") from None


def import_file(store: Store, path: str) -> ImportReport:
    """Import a JSONL/JSON/CSV/Parquet file of items (all or nothing)."""
    rows, source = read_rows(path)
    if not rows:
        raise DataError(f"{path}: nothing to import")
    validate_rows(rows, source)
    return store.import_items(normalise_rows(rows))


def import_rows(store: Store, rows: Sequence[Mapping[str, Any]], name: str = "request") -> ImportReport:
    """Import rows sent to the API or read from LangSmith; problems are :class:`Invalid`, naming the row."""
    if not isinstance(rows, Sequence) or not all(isinstance(r, Mapping) for r in rows):
        raise Invalid(f"{name}: expected a list of objects")
    try:
        validate_rows(rows, Source(name))
    except DataError as error:
        raise Invalid(str(error)) from None
    return store.import_items(normalise_rows(rows))


# ----------------------------------------------------------------------------------------------
# LangSmith runs

_ROLES = {
    "human": "user",
    "user": "user",
    "humanmessage": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "aimessage": "assistant",
    "system": "system",
    "systemmessage": "system",
}
_TEXT_INPUTS = ("prompt", "input", "question", "query", "text")
_TEXT_OUTPUTS = ("output", "answer", "text", "content", "completion", "response", "result")


def _message(value: Any) -> dict[str, str] | None:
    """One chat message in any of the usual shapes, or None."""
    if not isinstance(value, Mapping):
        return None
    if "kwargs" in value and isinstance(value.get("id"), list):  # LangChain-serialised message
        kind = str(value["id"][-1]).lower()
        content = value["kwargs"].get("content")
    elif "data" in value and isinstance(value["data"], Mapping):
        kind, content = str(value.get("type", "")).lower(), value["data"].get("content")
    else:
        kind, content = str(value.get("role") or value.get("type") or "").lower(), value.get("content")
    role = _ROLES.get(kind)
    if role is None or not isinstance(content, str) or not content.strip():
        return None
    return {"role": role, "content": content}


def _messages(value: Any) -> list[dict[str, str]] | None:
    if isinstance(value, list) and value and isinstance(value[0], list):  # batched: [[...]]
        value = value[0]
    if not isinstance(value, list) or not value:
        return None
    messages = [_message(m) for m in value]
    return messages if all(m is not None for m in messages) else None  # type: ignore[return-value]


def run_prompt(inputs: Mapping[str, Any], key: str | None = None) -> list[dict[str, str]] | None:
    """The prompt of a run's inputs, as chat messages ending with the user's turn, or None."""
    keys = (key,) if key else ("messages", *_TEXT_INPUTS, "prompts")
    for name in keys:
        value = inputs.get(name)
        if isinstance(value, str) and value.strip():
            return [{"role": "user", "content": value}]
        if name == "prompts" and isinstance(value, list) and value and isinstance(value[0], str):
            return [{"role": "user", "content": value[0]}]
        messages = _messages(value)
        if messages:
            while messages and messages[-1]["role"] == "assistant":  # an answer inside the input is not the prompt
                messages.pop()
            return messages or None
    return None


def run_output(outputs: Mapping[str, Any] | None, key: str | None = None) -> str | None:
    """The response text of a run's outputs, or None."""
    if not outputs:
        return None
    if key:
        value = outputs.get(key)
        return value if isinstance(value, str) and value.strip() else (_message(value) or {}).get("content")
    generations = outputs.get("generations")
    if isinstance(generations, list) and generations:
        first = generations[0][0] if isinstance(generations[0], list) and generations[0] else generations[0]
        if isinstance(first, Mapping):
            message = _message(first.get("message"))
            text = message["content"] if message else first.get("text")
            return text if isinstance(text, str) and text.strip() else None
    choices = outputs.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = _message({"role": "assistant", **(choices[0].get("message") or {})})
        return message["content"] if message else None
    for name in _TEXT_OUTPUTS:
        value = outputs.get(name)
        if isinstance(value, str) and value.strip():
            return value
        message = _message(value)
        if message:
            return message["content"]
    return None


def _run_model(extra: Mapping[str, Any] | None) -> str | None:
    extra = extra or {}
    metadata, params = extra.get("metadata") or {}, extra.get("invocation_params") or {}
    model = metadata.get("ls_model_name") or params.get("model") or params.get("model_name")
    return str(model) if model else None


def runs_to_rows(
    runs: Iterable[Any], input_key: str | None = None, output_key: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Import rows from LangSmith runs (grouped by prompt), and how many runs could not be read."""
    grouped: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for run in runs:
        prompt = run_prompt(run.inputs or {}, input_key)
        text = run_output(run.outputs, output_key)
        if prompt is None or text is None:
            unreadable += 1
            continue
        key = repr(prompt)
        row = grouped.setdefault(key, {"prompt": prompt, "candidates": []})
        row["candidates"].append(
            {
                "text": text,
                "model": _run_model(run.extra),
                "run_id": str(run.id),
                "session_id": str(run.session_id) if run.session_id else None,
            }
        )
    return list(grouped.values()), unreadable


def import_langsmith(
    store: Store,
    client: Any,
    project: str,
    *,
    limit: int | None = None,
    run_type: str | None = "llm",
    input_key: str | None = None,
    output_key: str | None = None,
) -> tuple[ImportReport, int]:
    """Import runs of a LangSmith project (``client.list_runs``); returns the report and unreadable runs."""
    runs = client.list_runs(project_name=project, run_type=run_type, limit=limit, error=False)
    rows, unreadable = runs_to_rows(runs, input_key, output_key)
    if not rows:
        return ImportReport(), unreadable
    return import_rows(store, rows, name=f"LangSmith project {project!r}"), unreadable
