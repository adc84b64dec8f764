"""Datasets: loading from any source, validation that names file/row/field, and rendering.

Loading accepts local JSON/JSONL/CSV/Parquet files, folders (of such files, one per split, or a
``datasets.save_to_disk`` folder), hub ids, and the built-in task's sets (``builtin:tiny/sft``,
``builtin:tiny/pairs``, ``builtin:tiny/thumbs``, ``builtin:tiny/prompts``). Every row is validated
before training by the torch-free checks of :mod:`rlhf_core.rows` (the feedback app runs the same
ones), so a bad row stops the run with a message like ``data.jsonl: row 12: 'chosen': identical
to 'rejected'`` instead of a shape error deep inside a trainer.

Rendering of preference data lives here too (:func:`preference_ids`, :func:`scoring_ids`): the PPO
stage scores its rollouts with exactly the token sequence the reward stage trained on, or the
reward model would read its score at the wrong token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetNotFoundError
from transformers import PreTrainedTokenizerBase

from rlhf.arguments import DataArguments
from rlhf.results import LengthReport
from rlhf.tiny import corpus
from rlhf_core.convert import Conversion, convert
from rlhf_core.errors import DataError
from rlhf_core.rows import Source, read_file, split_files

logger = logging.getLogger(__name__)


# Built-in sets of the tiny task: name -> (builder, rows per split).
_BUILTIN: dict[str, tuple[Callable[..., list[dict[str, Any]]], dict[str, int | None]]] = {
    "builtin:tiny/sft": (corpus.sft_rows, {"train": 3000, "test": 200}),
    "builtin:tiny/pairs": (corpus.preference_rows, {"train": 8000, "test": 600}),
    "builtin:tiny/thumbs": (corpus.thumbs_rows, {"train": 8000, "test": 600}),
    "builtin:tiny/prompts": (corpus.prompt_rows, {"train": 2048, "test": None}),
}


# ----------------------------------------------------------------------------------------------
# Loading


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
        return read_file(path) if split == "train" else None
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                return (loaded[split].to_list(), Source(f"{path}[{split}]")) if split in loaded else None
            return (loaded.to_list(), Source(str(path))) if split == "train" else None
        files = split_files(path)
        return read_file(files[split]) if split in files else None
    if name.startswith((".", "/")) or name.endswith((".jsonl", ".json", ".csv", ".parquet")):
        raise DataError(f"{name}: no such file or folder")
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except ValueError as error:  # unknown split
        if "split" in str(error).lower():
            return None
        raise
    except DatasetNotFoundError as error:
        raise DataError(
            f"{name}: not a local file or folder, nor a dataset on the hub: check the spelling (a private dataset "
            "needs `hf auth login`)"
        ) from error
    except ConnectionError as error:  # offline (HF_DATASETS_OFFLINE) or unreachable, and not in the cache
        raise DataError(
            f"{name}: not a local file or folder, and the hub cannot be reached to load it ({error}): check the "
            f"spelling, or download it where the hub is reachable (`hf download --repo-type dataset {name}`)"
        ) from error
    return loaded.to_list(), Source(f"{name}[{split}]")


def load_rows(
    name: str, split: str, kind: str, config: str | None = None, columns: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], Source, Conversion] | None:
    """Rows of one split in this toolkit's format ``kind``, converted (renamed columns, Alpaca, ShareGPT) and
    validated; ``None`` when the dataset has no such split. Says what it converted."""
    loaded = load_split(name, split, config)
    if loaded is None:
        return None
    rows, conversion = convert(loaded[0], kind, loaded[1], columns)
    if conversion.describe():
        logger.info("%s: read as %s", loaded[1].name, conversion.describe())
    return rows, loaded[1], conversion


def load_splits(args: DataArguments, kind: str, seed: int) -> tuple[Dataset, Dataset | None]:
    """Train and evaluation sets, validated; the evaluation set is the test split or a held-out slice."""
    if not args.dataset_name:
        raise DataError("no dataset: set dataset_name in the recipe or pass --dataset_name")
    train = load_rows(args.dataset_name, args.dataset_train_split, kind, args.dataset_config, args.column_map)
    if train is None:
        raise DataError(f"{args.dataset_name}: no split {args.dataset_train_split!r}")
    rows = train[0]
    test = load_rows(args.dataset_name, args.dataset_test_split, kind, args.dataset_config, args.column_map)
    if test is not None:
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


def right_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences as one right-padded batch: ``(input_ids, attention_mask)``, both B x longest."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask
