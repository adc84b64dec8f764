"""Datasets: loading from any source, validation that names file/row/field, and rendering.

Loading accepts local JSON/JSONL/CSV/Parquet files, folders (of such files, one per split, or a
``datasets.save_to_disk`` folder), hub ids, and the built-in task's sets (``builtin:tiny/sft``,
``builtin:tiny/pairs``, ``builtin:tiny/prompts``). Every row is validated before training, so a bad
row stops the run with a message like ``data.jsonl: row 12: 'chosen': identical to 'rejected'``
instead of a shape error deep inside a trainer.

Rendering of preference data lives here too (:func:`preference_ids`, :func:`scoring_ids`): the PPO
stage scores its rollouts with exactly the token sequence the reward stage trained on, or the
reward model would read its score at the wrong token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from rlhf.config import DataArguments
from rlhf.tiny import task

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 5

# Built-in sets of the tiny task: name -> (builder, rows per split).
_BUILTIN: dict[str, tuple[Callable[..., list[dict[str, Any]]], dict[str, int | None]]] = {
    "builtin:tiny/sft": (task.sft_rows, {"train": 3000, "test": 200}),
    "builtin:tiny/pairs": (task.preference_rows, {"train": 8000, "test": 600}),
    "builtin:tiny/prompts": (task.prompt_rows, {"train": 2048, "test": None}),
}


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file, row and field."""


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
# Loading


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
            and key in ("messages", "prompt", "chosen", "rejected", "completion")
        ):
            with contextlib.suppress(json.JSONDecodeError):  # plain text that starts with "[" stays text
                out[key] = json.loads(value)
    return out


def _read_file(path: Path) -> tuple[list[dict[str, Any]], Source]:
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
        loaded = datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
        rows = [_decode_json_cells(r) for r in loaded] if suffix == ".csv" else loaded.to_list()
        return rows, Source(str(path))
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet") and path.stem not in files:
            files[path.stem] = path
    return files


def load_split(name: str, split: str, config: str | None = None) -> tuple[list[dict[str, Any]], Source] | None:
    """Rows of one split, or ``None`` when the dataset has no such split."""
    if name.startswith("builtin:"):
        if name not in _BUILTIN:
            raise DataError(f"unknown built-in dataset {name!r}; known: {sorted(_BUILTIN)}")
        builder, sizes = _BUILTIN[name]
        if split not in sizes:
            return None
        return builder(sizes[split], split=split), Source(f"{name}[{split}]")
    path = Path(name)
    if path.is_file():
        return _read_file(path) if split == "train" else None
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                return (loaded[split].to_list(), Source(f"{path}[{split}]")) if split in loaded else None
            return (loaded.to_list(), Source(str(path))) if split == "train" else None
        files = _split_files(path)
        return _read_file(files[split]) if split in files else None
    if name.startswith((".", "/")) or name.endswith((".jsonl", ".json", ".csv", ".parquet")):
        raise DataError(f"{name}: no such file or folder")
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except ValueError as error:  # unknown split
        if "split" in str(error).lower():
            return None
        raise
    return loaded.to_list(), Source(f"{name}[{split}]")


# ----------------------------------------------------------------------------------------------
# Validation: pure functions over rows; each returns the problems it found.


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def _check_text(value: Any, field: str) -> list[str]:
    if not isinstance(value, str):
        return [f"'{field}': expected text, got {type(value).__name__}"]
    if not value.strip():
        return [f"'{field}': empty"]
    return []


def _check_messages(value: Any, field: str, *, last: str | None = None, only: str | None = None) -> list[str]:
    """Roles known, contents non-empty, turns alternating (system first, then user/assistant)."""
    if not _is_messages(value):
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
        if _is_messages(row["prompt"]) or _is_messages(row["completion"]):
            return _check_messages(row["prompt"], "prompt", last="user") + _check_messages(
                row["completion"], "completion", only="assistant"
            )
        return _check_text(row["prompt"], "prompt") + _check_text(row["completion"], "completion")
    if "text" in row:
        return _check_text(row["text"], "text")
    return [f"no 'messages', 'prompt'+'completion' or 'text' column (found {sorted(row)})"]


def _check_preference_row(row: dict[str, Any]) -> list[str]:
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing:
        return [f"missing column(s) {missing} (found {sorted(row)})"]
    conversational = _is_messages(row["chosen"]) or _is_messages(row["rejected"])
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
    if _is_messages(row["prompt"]):
        return _check_messages(row["prompt"], "prompt", last="user")
    return _check_text(row["prompt"], "prompt")


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "sft": _check_sft_row,
    "preference": _check_preference_row,
    "prompt": _check_prompt_row,
}


def validate(rows: Iterable[dict[str, Any]], kind: str, source: Source) -> None:
    """Raise :class:`DataError` listing the first problems (file, row, field) of a dataset."""
    check = CHECKS[kind]
    errors: list[str] = []
    count = 0
    formats: set[str] = set()
    for index, row in enumerate(rows):
        count += 1
        for problem in check(row):
            errors.append(f"{source.at(index)}: {problem}")
        if kind == "preference" and "chosen" in row:
            formats.add("conversational" if _is_messages(row["chosen"]) else "text")
    if count == 0:
        raise DataError(f"{source.name}: no rows")
    if len(formats) > 1:
        errors.append(f"{source.name}: mixes conversational and plain-text rows; use one format")
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} problem(s) in {kind} data:\n  {shown}{more}")


def load_splits(args: DataArguments, kind: str, seed: int) -> tuple[Dataset, Dataset | None]:
    """Train and evaluation sets, validated; the evaluation set is the test split or a held-out slice."""
    if not args.dataset_name:
        raise DataError("no dataset: set dataset_name in the recipe or pass --dataset_name")
    train = load_split(args.dataset_name, args.dataset_train_split, args.dataset_config)
    if train is None:
        raise DataError(f"{args.dataset_name}: no split {args.dataset_train_split!r}")
    rows, source = train
    validate(rows, kind, source)
    test = load_split(args.dataset_name, args.dataset_test_split, args.dataset_config)
    if test is not None:
        validate(test[0], kind, test[1])
        train_set, eval_set = Dataset.from_list(rows), Dataset.from_list(test[0])
    elif args.eval_split_size > 0:
        split = Dataset.from_list(rows).train_test_split(test_size=args.eval_split_size, seed=seed)
        train_set, eval_set = split["train"], split["test"]
    else:
        train_set, eval_set = Dataset.from_list(rows), None
    if args.max_train_samples is not None:
        train_set = train_set.select(range(min(args.max_train_samples, len(train_set))))
    if eval_set is not None and args.max_eval_samples is not None:
        eval_set = eval_set.select(range(min(args.max_eval_samples, len(eval_set))))
    return train_set, eval_set


# ----------------------------------------------------------------------------------------------
# Length policy and rendering


@dataclass(frozen=True)
class LengthReport:
    """What the length policy did to one dataset (written to metrics.json)."""

    rows: int
    overlong: int
    dropped: int
    truncated: int


def enforce_max_length(
    dataset: Dataset,
    max_length: int | None,
    policy: str,
    name: str,
    columns: tuple[str, ...] = ("input_ids",),
    truncatable: tuple[str, ...] = ("input_ids", "labels"),
) -> tuple[Dataset, LengthReport]:
    """Apply the ``overlong`` policy to tokenized rows longer than ``max_length``: never silently.

    ``columns`` are the token columns whose length counts (``chosen_ids``/``rejected_ids`` for
    preference data). ``truncate`` keeps the start of ``truncatable`` columns and then drops rows
    with no trainable label left.
    """
    total = len(dataset)
    if max_length is None:
        return dataset, LengthReport(total, 0, 0, 0)
    lengths = [max(len(row[c]) for c in columns) for row in dataset.select_columns(list(columns))]
    overlong = [i for i, n in enumerate(lengths) if n > max_length]
    if not overlong:
        return dataset, LengthReport(total, 0, 0, 0)
    shown = ", ".join(str(i + 1) for i in overlong[:10]) + (" ..." if len(overlong) > 10 else "")
    if policy == "error":
        raise DataError(
            f"{name}: {len(overlong)} of {total} rows are longer than max_length={max_length} tokens "
            f"(rows {shown}); raise max_length, or set overlong: drop or truncate"
        )
    if policy == "drop":
        keep = sorted(set(range(total)) - set(overlong))
        logger.warning(
            "%s: dropped %d of %d rows longer than max_length=%d (rows %s)",
            name,
            len(overlong),
            total,
            max_length,
            shown,
        )
        return dataset.select(keep), LengthReport(total, len(overlong), len(overlong), 0)
    if policy == "truncate":
        present = [c for c in truncatable if c in dataset.column_names]
        cut = dataset.map(lambda row: {c: row[c][:max_length] for c in present})
        if "labels" in cut.column_names:
            cut = cut.filter(lambda row: any(label != -100 for label in row["labels"]))
        dropped = total - len(cut)
        logger.warning(
            "%s: truncated %d of %d rows to max_length=%d (rows %s); %d left with nothing to learn were dropped",
            name,
            len(overlong),
            total,
            max_length,
            shown,
            dropped,
        )
        return cut, LengthReport(total, len(overlong), dropped, len(overlong) - dropped)
    raise DataError(f"unknown overlong policy {policy!r}")


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def conversation_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any) -> list[int]:
    """Token ids of prompt + completion exactly as the reward model reads them.

    Conversational data goes through the chat template (ending with the end-of-turn token and
    whatever the template puts after it); plain text is prompt + completion + EOS, as TRL does.
    """
    if isinstance(completion, list) or isinstance(prompt, list):
        messages = (_as_messages(prompt, "user") if prompt else []) + _as_messages(completion, "assistant")
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    text = (prompt or "") + completion
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text)["input_ids"])


def preference_ids(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Tokenize one preference row into the ``chosen_ids``/``rejected_ids`` TRL's RewardTrainer takes."""
    prompt = row.get("prompt")
    out: dict[str, Any] = {
        "chosen_ids": conversation_ids(tokenizer, prompt, row["chosen"]),
        "rejected_ids": conversation_ids(tokenizer, prompt, row["rejected"]),
    }
    if "margin" in row:  # rows without a margin in a dataset that has the column: no margin
        out["margin"] = float(row["margin"]) if row["margin"] is not None else 0.0
    return out


def scoring_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any, response: str) -> list[int]:
    """Token ids for scoring a generated response with the reward model (same layout as training)."""
    completion: Any = [{"role": "assistant", "content": response}] if isinstance(prompt, list) else response
    return conversation_ids(tokenizer, prompt, completion)
