"""Choosing what annotators rank next, and the reward model's accuracy on the policy's own answers (pure code)."""

from __future__ import annotations

import math

import pytest

from rlhf import evaluation, selection


def test_uncertainty_is_one_for_equal_scores_and_falls_as_the_reward_model_separates_them() -> None:
    assert selection.uncertainty([0.3, 0.3, 0.3]) == pytest.approx(1.0)
    # two candidates, margin 2: p = sigmoid(2) = 0.8808, 1 - |2p - 1| = 2 - 2p = 0.2384
    assert selection.uncertainty([2.0, 0.0]) == pytest.approx(2 - 2 / (1 + math.exp(-2)))
    # three candidates: the mean over the three pairs (margins 1, 3, 2)
    by_hand = [2 - 2 / (1 + math.exp(-m)) for m in (1, 3, 2)]
    assert selection.uncertainty([3.0, 2.0, 0.0]) == pytest.approx(sum(by_hand) / 3)
    assert selection.uncertainty([0.0, 3.0, 2.0]) == pytest.approx(selection.uncertainty([3.0, 2.0, 0.0]))
    assert selection.uncertainty([1e6, -1e6]) == 0.0  # no overflow on huge margins
    with pytest.raises(ValueError, match="at least 2"):
        selection.uncertainty([1.0])
    with pytest.raises(ValueError, match="non-finite"):
        selection.uncertainty([1.0, math.nan])


def test_uncertainty_selection_takes_the_least_certain_sets_and_random_ignores_the_scores() -> None:
    scores = [0.1, 0.9, 0.5, 0.9, 0.2]
    assert selection.select(scores, 2, "uncertainty") == [1, 3]
    assert selection.select(scores, 3, "uncertainty") == [1, 2, 3]
    assert selection.select([0.5, 0.5, 0.5], 2, "uncertainty") == [0, 1]  # ties: the earlier sets
    drawn = selection.select(scores, 3, "random", seed=7)
    assert drawn == sorted(drawn) and len(set(drawn)) == 3 and selection.select(scores, 3, "random", seed=7) == drawn
    assert {tuple(selection.select(scores, 2, "random", seed=s)) for s in range(20)} != {(1, 3)}
    assert selection.select(scores, 0, "uncertainty") == [] and selection.select(scores, 5, "random") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot choose 6 of 5"):
        selection.select(scores, 6, "random")
    with pytest.raises(ValueError, match="unknown selector 'margin'"):
        selection.select(scores, 1, "margin")


def test_ranking_accuracy_counts_gold_separated_pairs_and_half_for_reward_model_ties() -> None:
    # prompt 1: gold 1 > 0 > -1, the reward model gets (a, b) and (a, c) right, (b, c) wrong
    # prompt 2: gold ties (no pair); prompt 3: reward-model tie on a gold-separated pair (half)
    groups = [([2.0, 0.0, 1.0], [1.0, 0.0, -1.0]), ([0.0, 1.0], [0.5, 0.5]), ([0.3, 0.3], [1.0, -1.0])]
    accuracy, pairs = selection.ranking_accuracy(groups)
    assert pairs == 4 and accuracy == pytest.approx((2 + 0.5) / 4)
    assert selection.ranking_accuracy([([1.0, 2.0], [0.0, 0.0])]) == (None, 0)
    with pytest.raises(ValueError, match="2 reward scores for 3 gold"):
        selection.ranking_accuracy([([1.0, 2.0], [0.0, 1.0, 2.0])])


def test_the_evaluation_measures_the_reward_model_on_each_policys_answers_to_the_same_prompt() -> None:
    def sample(policy: str, prompt: int, seed: int, reward: float, gold: float) -> dict[str, object]:
        return {"policy": policy, "prompt_index": prompt, "seed": seed, "reward": reward, "gold": gold}

    samples = [
        sample("ppo", 0, 0, 1.0, 1.0),
        sample("ppo", 0, 1, 2.0, -1.0),  # the reward model prefers the answer the judge calls worse
        sample("ppo", 1, 0, 1.0, 1.0),
        sample("ppo", 1, 1, 0.0, 0.0),
        sample("sft", 0, 0, 1.0, 1.0),
        sample("sft", 0, 1, 0.0, 0.0),
    ]
    assert evaluation.reward_model_accuracy([s for s in samples if s["policy"] == "ppo"]) == 0.5
    assert evaluation.reward_model_accuracy([s for s in samples if s["policy"] == "sft"]) == 1.0
    assert evaluation.reward_model_accuracy([{k: v for k, v in s.items() if k != "gold"} for s in samples]) is None


def test_disagreement_by_hand_and_the_selector_picks_the_most_disputed_sets() -> None:
    # two members, two answers: they agree on the first (0 spread) and differ by 2 on the second (std 1)
    assert selection.disagreement([[0.5, 1.0], [0.5, -1.0]]) == pytest.approx(0.5)
    # three members on one answer: population std of (0, 1, 2) = sqrt(2/3)
    assert selection.disagreement([[0.0], [1.0], [2.0]]) == pytest.approx(math.sqrt(2 / 3))
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        selection.disagreement([[1.0, 2.0]])
    with pytest.raises(ValueError, match="non-finite"):
        selection.disagreement([[1.0], [math.nan]])
    assert selection.select([0.1, 0.9, 0.5, 0.9], 2, "disagreement") == [1, 3]
