"""Rows in other toolkits' layouts (Alpaca, ShareGPT) and under other column names, read as every stage reads data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf import data
from rlhf.arguments import DataArguments
from rlhf.cli import main
from rlhf_core.convert import convert
from rlhf_core.errors import ConfigError, DataError
from rlhf_core.rows import Source

USER = {"role": "user", "content": "What is 3 plus 4?"}
ANSWER = {"role": "assistant", "content": "3 plus 4 is 7."}
HUMAN = {"from": "human", "value": "What is 3 plus 4?"}
GPT = {"from": "gpt", "value": "3 plus 4 is 7."}
SOURCE = Source("data.jsonl", [1, 2, 3])


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _problem(rows: list[dict[str, object]], kind: str, columns: dict[str, str] | None = None) -> str:
    with pytest.raises(DataError) as error:
        convert(rows, kind, SOURCE, columns)
    return str(error.value)


def test_alpaca_rows_load_for_sft(tmp_path: Path) -> None:
    rows = [
        {"instruction": "What is 3 plus 4?", "input": "", "output": "3 plus 4 is 7."},
        {"instruction": "Add the numbers.", "input": "3 and 4", "output": "7.", "system": "Be brief."},
        {"instruction": "And 1 more?", "output": "8.", "history": [["What is 3 plus 4?", "7."]]},
    ]
    args = DataArguments(dataset_name=str(_jsonl(tmp_path / "alpaca.jsonl", rows)), eval_split_size=0)
    train, _ = data.load_splits(args, "sft", seed=0)
    assert train[0] == {"prompt": [USER], "completion": [ANSWER]}
    assert train[1]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add the numbers.\n\n3 and 4"},
    ]
    assert train[2]["prompt"] == [
        USER,
        {"role": "assistant", "content": "7."},
        {"role": "user", "content": "And 1 more?"},
    ]


def test_sharegpt_rows_load_for_sft() -> None:
    rows = [
        {"conversations": [HUMAN, GPT]},
        {"conversations": [{"from": "system", "value": "Be brief."}, HUMAN, GPT]},
        {"conversations": [HUMAN, GPT], "system": "Be brief."},
    ]
    converted, conversion = convert(rows, "sft", SOURCE)
    assert converted[0] == {"messages": [USER, ANSWER]}
    assert converted[1] == converted[2] == {"messages": [{"role": "system", "content": "Be brief."}, USER, ANSWER]}
    assert conversion.describe().startswith("sharegpt format: system -> messages, conversations -> messages")


def test_sharegpt_preference_rows_load_for_the_reward_model(tmp_path: Path) -> None:
    """LLaMA-Factory's layout: the prompt's turns, then one chosen and one rejected turn."""
    rejected = {"from": "gpt", "value": "3 plus 4 is 8."}
    rows = [
        {"conversations": [HUMAN], "chosen": GPT, "rejected": rejected},
        {"conversations": [HUMAN], "chosen": [GPT], "rejected": [rejected]},
    ]
    args = DataArguments(dataset_name=str(_jsonl(tmp_path / "pairs.jsonl", rows)), eval_split_size=0)
    train, _ = data.load_splits(args, "preference", seed=0)
    expected = {"prompt": [USER], "chosen": [ANSWER], "rejected": [{"role": "assistant", "content": "3 plus 4 is 8."}]}
    assert train.to_list() == [expected, expected]
    # without a prompt column: each side is the whole conversation
    converted, _ = convert([{"chosen": [HUMAN, GPT], "rejected": [HUMAN, rejected]}], "preference", SOURCE)
    assert converted[0]["chosen"] == [USER, ANSWER] and "prompt" not in converted[0]


def test_alpaca_preference_and_thumbs_and_prompt_rows() -> None:
    pair = {"instruction": "What is 3 plus 4?", "chosen": "7.", "rejected": "8.", "margin": 1.0}
    (converted,), conversion = convert([pair], "preference", SOURCE)
    assert converted["prompt"] == [USER] and converted["chosen"] == [{"role": "assistant", "content": "7."}]
    assert converted["margin"] == 1.0
    assert conversion.describe() == "alpaca format: instruction -> prompt, chosen -> chosen, rejected -> rejected"
    thumbs = {"instruction": "What is 3 plus 4?", "output": "7.", "kto_tag": True}
    (converted,), _ = convert([thumbs], "unpaired", SOURCE)
    assert converted == {"prompt": [USER], "completion": [{"role": "assistant", "content": "7."}], "label": True}
    (converted,), _ = convert([{"conversations": [HUMAN, GPT], "kto_tag": False}], "unpaired", SOURCE)
    assert converted == {"prompt": [USER], "completion": [ANSWER], "label": False}
    (converted,), _ = convert([{"conversations": [HUMAN]}], "prompt", SOURCE)
    assert converted == {"prompt": [USER]}


def test_columns_under_other_names_are_mapped(tmp_path: Path) -> None:
    rows = [{"question": "What is 3 plus 4?", "better": "7.", "worse": "8."}]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    args = DataArguments(
        dataset_name=str(path), eval_split_size=0, columns=["prompt=question,chosen=better", "rejected=worse"]
    )
    train, _ = data.load_splits(args, "preference", seed=0)
    assert train.to_list() == [{"prompt": "What is 3 plus 4?", "chosen": "7.", "rejected": "8."}]
    # a YAML mapping works too, and a mapping onto a layout's own names converts that layout
    args = DataArguments(columns={"instruction": "q", "output": "a"})  # type: ignore[arg-type]
    (converted,), conversion = convert([{"q": "What is 3 plus 4?", "a": "7."}], "sft", SOURCE, args.column_map)
    assert converted["prompt"] == [USER]
    assert (
        conversion.describe()
        == "columns: q -> instruction, a -> output; alpaca format: instruction -> prompt, output -> completion"
    )


def test_a_bad_column_mapping_is_refused_before_loading() -> None:
    with pytest.raises(
        ConfigError, match=r"columns: 'chosn' is not a column this toolkit reads \(did you mean 'chosen'\?\)"
    ):
        DataArguments(columns=["chosn=better"])
    with pytest.raises(ConfigError, match="columns: 'chosen' is not COLUMN=NAME"):
        DataArguments(columns=["chosen"])


def test_a_bad_mapped_row_names_the_file_line_and_the_users_field() -> None:
    rows = [{"better": "7.", "worse": "8."}, {"better": "7.", "worse": " "}, {"better": "7.", "worse": "7."}]
    message = _problem(rows, "preference", {"chosen": "better", "rejected": "worse"})
    assert "data.jsonl: line 2: 'worse' (as rejected): empty" in message
    assert "data.jsonl: line 3: 'better' (as chosen): identical to 'worse' (as rejected)" in message
    assert "line 1" not in message


def test_a_bad_alpaca_row_names_its_field() -> None:
    rows = [{"instruction": "What is 3 plus 4?", "output": "7."}, {"instruction": "What is 3 plus 4?", "output": ""}]
    assert "data.jsonl: line 2: 'output': empty" in _problem(rows, "sft")
    assert "data.jsonl: line 1: 'q' (as instruction): empty" in _problem(
        [{"q": "", "output": "7."}], "sft", {"instruction": "q"}
    )


def test_a_bad_sharegpt_row_names_the_turn() -> None:
    tool = {"conversations": [HUMAN, {"from": "function_call", "value": "{}"}]}
    assert "line 1: 'conversations'[1]: 'from' 'function_call' is not one of" in _problem([tool], "sft")
    twice = {"conversations": [HUMAN, HUMAN, GPT]}
    assert "line 1: 'conversations'[1]: two 'user' turns in a row" in _problem([twice], "sft")
    no_answer = {"conversations": [HUMAN]}
    assert "line 1: 'conversations': last message has role 'user', expected 'assistant'" in _problem([no_answer], "sft")


def test_data_check_says_what_it_mapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Add", "input": "3 and 4", "output": "7."}])
    assert main(["data", "check", "--kind", "sft", "--dataset", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 rows, valid sft data (read as alpaca format: instruction+input -> prompt, output -> completion)" in out
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Add 3 and 4", "better": "7.", "worse": "8."}])
    argv = [
        "data",
        "check",
        "--kind",
        "preference",
        "--dataset",
        str(pairs),
        "--columns",
        "chosen=better,rejected=worse",
    ]
    assert main(argv) == 0
    assert "(read as columns: better -> chosen, worse -> rejected)" in capsys.readouterr().out


def test_sft_trains_on_the_answer_of_an_alpaca_row(tmp_path: Path) -> None:
    """The converted rows go through the chat template, with the loss on the output only."""
    from rlhf.arguments import ModelArguments
    from rlhf.stages import sft
    from rlhf.stages.sft import SFTConfig

    path = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "What is 3 plus 4?", "output": "3 plus 4 is 7."}] * 4)
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_length=64, report_to=[], use_cpu=True)
    trainer = sft.build(
        ModelArguments(model_name_or_path="builtin:tiny"),
        DataArguments(dataset_name=str(path), eval_split_size=0),
        config,
    )
    row = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    assert "3 plus 4 is 7." in learned and "What is" not in learned
    assert "What is 3 plus 4?" in tokenizer.decode(row["input_ids"])


def test_ppo_reads_sharegpt_prompts(tmp_path: Path) -> None:
    """The RL stages' prompts go through the same conversion (train and held-out splits)."""
    from rlhf.arguments import ModelArguments
    from rlhf.ppo.config import PPOConfig
    from rlhf.stages import ppo

    folder = tmp_path / "prompts"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"conversations": [HUMAN]}] * 8)
    _jsonl(folder / "test.jsonl", [{"conversations": [HUMAN]}] * 2)
    config = PPOConfig(
        output_dir=str(tmp_path / "ppo"),
        reward_funcs=["rlhf.tiny.task:score"],
        advantage_estimator="grpo",
        rollout_batch_size=8,
        mini_batch_size=8,
    )
    trainer = ppo.build(
        ModelArguments(model_name_or_path="builtin:tiny"), DataArguments(dataset_name=str(folder)), config
    )
    assert trainer.train_prompts[0]["prompt"] == [USER]
    assert trainer.eval_prompts is not None and len(trainer.eval_prompts) == 2
