"""Reward functions named in a recipe: loaded, called as TRL calls them, checked, weighted."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rlhf.policy import rewards
from rlhf.tiny import corpus, task
from rlhf_core.errors import ConfigError

CALLS: list[dict[str, Any]] = []


def length_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    CALLS.append({"prompts": prompts, "completions": completions, **kwargs})
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def short_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    return [1.0]


def nan_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    return [None, math.nan]


def test_functions_get_trl_keywords_and_chat_completions() -> None:
    CALLS.clear()
    functions = rewards.RewardFunctions.load([f"{__name__}:length_reward"], None)
    chat = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    out = functions(chat, ["abc", "de"], [[1, 2, 3], [4]])
    assert out["length_reward"].tolist() == [3.0, 2.0]
    call = CALLS[-1]
    assert call["prompts"] == chat
    assert call["completions"] == [[{"role": "assistant", "content": "abc"}], [{"role": "assistant", "content": "de"}]]
    assert call["completion_ids"] == [[1, 2, 3], [4]]
    assert functions(["q1", "q2"], ["abc", "de"], [[1], [2]])["length_reward"].tolist() == [3.0, 2.0]
    assert CALLS[-1]["completions"] == ["abc", "de"]  # plain prompts: plain completions


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "reward_funcs: 'no_colon' is not 'package.module:function'"),
        ("no_such_module_xyz:f", "reward_funcs: cannot import 'no_such_module_xyz'"),
        (f"{__name__}:missing", f"reward_funcs: '{__name__}' has no function 'missing'"),
    ],
)
def test_a_function_that_cannot_be_loaded_is_an_error_naming_the_key(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rewards.RewardFunctions.load([spec], None)


def test_wrong_length_and_non_finite_values_name_the_function_and_row() -> None:
    short = rewards.RewardFunctions.load([f"{__name__}:short_reward"], None)
    with pytest.raises(ValueError, match="'short_reward' returned 1 rewards for 2 completions"):
        short(["a", "b"], ["x", "y"], [[1], [2]])
    bad = rewards.RewardFunctions.load([f"{__name__}:nan_reward"], None)
    with pytest.raises(ValueError, match="'nan_reward' returned nan for row 1 \\(completion 'y'\\)"):
        bad(["a", "b"], ["x", "y"], [[1], [2]])


def test_components_are_weighted_and_summed() -> None:
    parts = {rewards.MODEL: torch.tensor([1.0, 2.0]), "f": torch.tensor([10.0, 0.0])}
    assert rewards.total(parts, {rewards.MODEL: 0.5, "f": 0.1}).tolist() == pytest.approx([1.5, 1.0])
    with pytest.raises(ValueError, match="no reward"):
        rewards.total({}, {})


def test_the_gold_judge_as_a_rule_reward_scores_like_the_judge_and_says_it_is_the_judge() -> None:
    row = corpus.prompt_rows(1, split="test")[0]
    prompt, answers = row["prompt"], ["I don't know.", row["reference"]]
    functions = rewards.RewardFunctions.load(["rlhf.tiny.task:gold_reward"], [2.0])
    got = functions([prompt, prompt], answers, [[0], [0]])["gold_reward"].tolist()
    assert got == pytest.approx([task.score(prompt, a) for a in answers])
    assert got[1] > got[0]
    assert task.gold_reward.judge is task.score  # type: ignore[attr-defined]
