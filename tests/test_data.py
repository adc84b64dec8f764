"""Data loading from every source, and errors that name the file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from rlhf import data
from rlhf.arguments import DataArguments
from rlhf_core.errors import DataError
from rlhf_core.rows import Source, validate

USER = {"role": "user", "content": "What is 1 plus 1?"}
ASSISTANT = {"role": "assistant", "content": "Sure! 1 plus 1 is 2."}
PAIR = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "3."}]}


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_loads_every_file_type(tmp_path: Path, suffix: str) -> None:
    rows = [PAIR, {**PAIR, "rejected": [{"role": "assistant", "content": "4."}]}]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        _jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":  # CSV holds conversations as JSON text
        Dataset.from_list([{k: json.dumps(v) for k, v in r.items()} for r in rows]).to_csv(str(path))
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    loaded, source = data.load_split(str(path), "train")
    validate(loaded, "preference", source)
    assert loaded[1]["rejected"][0]["content"] == "4."


def test_folder_of_split_files_and_save_to_disk(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [PAIR] * 3)
    _jsonl(folder / "test.jsonl", [PAIR])
    train, evals = data.load_splits(DataArguments(dataset_name=str(folder)), "preference", seed=0)
    assert (len(train), len(evals)) == (3, 1)

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list([PAIR] * 4), "test": Dataset.from_list([PAIR] * 2)}).save_to_disk(
        str(saved)
    )
    train, evals = data.load_splits(DataArguments(dataset_name=str(saved)), "preference", seed=0)
    assert (len(train), len(evals)) == (4, 2)


def test_a_hub_id_is_loaded_by_datasets_with_its_config_and_a_split_it_lacks_is_none(monkeypatch) -> None:
    """No hub here: ``datasets.load_dataset`` stands in for it. A name that is no local path goes to it with the
    dataset's configuration; its unknown-split error means "no such split" (the stage then holds out a slice)."""
    calls = []

    def load_dataset(name: str, config: str | None, split: str) -> Dataset:
        calls.append((name, config, split))
        if split != "train":
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train'].")
        return Dataset.from_list([PAIR])

    monkeypatch.setattr(data.datasets, "load_dataset", load_dataset)
    assert data.load_split("org/pairs", "train", "default") == ([PAIR], Source("org/pairs[train]"))
    assert data.load_split("org/pairs", "test") is None
    assert calls == [("org/pairs", "default", "train"), ("org/pairs", None, "test")]


def test_single_file_gets_a_deterministic_held_out_slice(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "sft.jsonl", [{"messages": [USER, {**ASSISTANT, "content": f"{i}."}]} for i in range(40)])
    args = DataArguments(dataset_name=str(path), eval_split_size=0.25)
    train, evals = data.load_splits(args, "sft", seed=3)
    again = data.load_splits(args, "sft", seed=3)[1]
    assert (len(train), len(evals)) == (30, 10)
    assert evals.to_list() == again.to_list()


def test_builtin_sets() -> None:
    train, evals = data.load_splits(DataArguments(dataset_name="builtin:tiny/pairs"), "preference", seed=0)
    assert len(train) == 8000 and len(evals) == 600
    with pytest.raises(DataError, match="unknown built-in dataset"):
        data.load_split("builtin:tiny/nope", "train")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIR) + "\n\n{not json}\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: not valid JSON"):
        data.load_split(str(path), "train")


def test_missing_file_is_named() -> None:
    with pytest.raises(DataError, match="no such file"):
        data.load_split("./nowhere/data.jsonl", "train")


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("preference", {"prompt": [USER], "chosen": [ASSISTANT]}, r"missing column\(s\) \['rejected'\]"),
        ("preference", {**PAIR, "rejected": [ASSISTANT]}, "'chosen': identical to 'rejected'"),
        (
            "preference",
            {**PAIR, "chosen": [{"role": "assistant", "content": "  "}]},
            r"'chosen'\[0\]: empty or missing 'content'",
        ),
        (
            "preference",
            {**PAIR, "chosen": [{"role": "bot", "content": "2."}]},
            r"'chosen'\[0\]: role 'bot' is not one of",
        ),
        ("preference", {**PAIR, "chosen": [USER]}, r"'chosen'\[0\]: role 'user', expected 'assistant'"),
        ("preference", {**PAIR, "margin": "big"}, "'margin': expected a finite number"),
        ("preference", {"prompt": "Hi", "chosen": "", "rejected": "No."}, "'chosen': empty"),
        ("sft", {"messages": [USER, USER, ASSISTANT]}, r"'messages'\[1\]: two 'user' turns in a row"),
        ("sft", {"messages": [USER]}, "'messages': last message has role 'user', expected 'assistant'"),
        (
            "sft",
            {"messages": [ASSISTANT, {"role": "system", "content": "x"}]},
            r"'messages'\[1\]: a system message may only come first",
        ),
        ("sft", {"question": "x"}, "no 'messages', 'prompt'\\+'completion' or 'text' column"),
        ("sft", {"text": ""}, "'text': empty"),
        ("prompt", {"prompt": [ASSISTANT]}, "'prompt': last message has role 'assistant', expected 'user'"),
    ],
)
def test_bad_rows_are_named_by_file_row_and_field(tmp_path: Path, kind: str, row: dict, message: str) -> None:
    good = {"preference": PAIR, "sft": {"messages": [USER, ASSISTANT]}, "prompt": {"prompt": [USER]}}[kind]
    path = _jsonl(tmp_path / "rows.jsonl", [good, good, row])
    rows, source = data.load_split(str(path), "train")
    with pytest.raises(DataError, match=rf"rows\.jsonl: line 3: {message}"):
        validate(rows, kind, source)


def test_many_problems_are_summarised(tmp_path: Path) -> None:
    rows = [{**PAIR, "rejected": [ASSISTANT]}] * 9
    with pytest.raises(DataError, match=r"(?s)9 problem\(s\).*x\.json: row 5: .*and 4 more"):
        validate(rows, "preference", Source("x.json"))


def test_mixed_formats_are_rejected() -> None:
    with pytest.raises(DataError, match="mixes conversational and plain-text"):
        validate([PAIR, {"prompt": "Hi", "chosen": "a", "rejected": "b"}], "preference", Source("x"))


def _tokenized(lengths: list[int]) -> Dataset:
    return Dataset.from_list([{"input_ids": [1] * n, "labels": [-100, *([1] * (n - 1))]} for n in lengths])


def test_overlong_rows_are_dropped_truncated_or_refused_never_silently() -> None:
    rows = _tokenized([3, 9, 4, 12])
    kept, report = data.enforce_max_length(rows, 8, "drop", "sft train data")
    assert [len(r) for r in kept["input_ids"]] == [3, 4]
    assert (report.overlong, report.dropped) == (2, 2)

    cut, report = data.enforce_max_length(rows, 8, "truncate", "sft train data")
    assert [len(r) for r in cut["input_ids"]] == [3, 8, 4, 8]
    assert (report.truncated, report.dropped) == (2, 0)

    with pytest.raises(DataError, match=r"2 of 4 rows are longer than max_length=8 tokens \(rows 2, 4\)"):
        data.enforce_max_length(rows, 8, "error", "sft train data")


def test_preference_rendering_matches_trl(tiny_tokenizer) -> None:
    """Our tokenization (shared with PPO scoring) is exactly what TRL's RewardTrainer would produce."""
    from trl.data_utils import _tokenize

    row = {**PAIR, "margin": 0.5}
    ours = data.preference_ids(row, tiny_tokenizer)
    theirs = _tokenize(tiny_tokenizer, row["prompt"] + row["chosen"])["input_ids"]
    assert ours["chosen_ids"] == list(theirs)
    assert ours["margin"] == 0.5
    assert data.scoring_ids(tiny_tokenizer, row["prompt"], "3.") == ours["rejected_ids"]

    text = {"prompt": "Q: 1+1? A:", "chosen": " 2", "rejected": " 3"}
    ids = data.preference_ids(text, tiny_tokenizer)["chosen_ids"]
    assert ids == tiny_tokenizer("Q: 1+1? A: 2" + tiny_tokenizer.eos_token)["input_ids"]
