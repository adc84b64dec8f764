"""Evaluation's sampling loop and arithmetic at the edges the mutation run (scripts/mutation.py) found unguarded.

:func:`evaluation.sample_policies` runs here on a stand-in sampler with the interface of
:class:`~rlhf.policy.sampler.PolicySampler` (no model): what is checked is the loop's bookkeeping,
which the slow eval-stage test covers only end to end.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rlhf import evaluation


class StandInSampler:
    """Answers ``"<policy> <prompt> <draw>"``, where ``draw`` comes from torch's global generator.

    Answer lengths 1, 2, 3, ... by prompt; every other prompt ends with EOS. Reward model ``k`` of
    ``members`` scores 10 + the prompt's index + k, combined by their mean; the reward functions score
    20 + the index; KL to the reference 0.5 per answer.
    """

    forward_batch_size = 2

    def __init__(self, has_reward_model: bool, members: int = 1) -> None:
        self.roles = SimpleNamespace(has_reward_model=has_reward_model)
        self.members = members

    def generate(self, prompts: list[str], reference: bool = False) -> Any:
        lengths = [int(p[1:]) + 1 for p in prompts]
        mask = torch.zeros(len(prompts), max(lengths))
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        draw = int(torch.randint(1000, ()))
        texts = [f"{'sft' if reference else 'ppo'} {p} {draw}" for p in prompts]
        ended = torch.tensor([int(p[1:]) % 2 == 0 for p in prompts])
        return SimpleNamespace(prompts=prompts, texts=texts, mask=mask, ended=ended)

    def member_scores(self, prompts: list[str], texts: list[str]) -> torch.Tensor:
        return torch.tensor([[10.0 + int(p[1:]) + k for p in prompts] for k in range(self.members)])

    def aggregate(self, members: torch.Tensor) -> torch.Tensor:
        return members.mean(0)

    def reward(self, answers: Any) -> torch.Tensor:
        return torch.tensor([20.0 + int(p[1:]) for p in answers.prompts])

    def kl_to_reference(self, answers: Any) -> torch.Tensor:
        return torch.full((len(answers.texts),), 0.5)


def _draw(seed: int, start: int) -> int:
    torch.manual_seed(seed * 100_003 + start)
    return int(torch.randint(1000, ()))


def test_sample_policies_pairs_both_policies_on_the_same_prompts_seeds_and_randomness() -> None:
    prompts = ["p0", "p1", "p2"]  # batches of 2: rows 0-1, then row 2
    samples = evaluation.sample_policies(
        StandInSampler(has_reward_model=True), prompts, [0, 7], judge=lambda prompt, text: float(len(text))
    )
    assert len(samples) == 2 * 3 * 2  # seeds x prompts x policies
    for s in samples:
        i = s["prompt_index"]
        # both policies' answers to a batch drew the same random numbers: seeded by (seed, batch start)
        draw = _draw(s["seed"], 0 if i < 2 else 2)
        assert s["response"] == f"{s['policy']} p{i} {draw}" and s["prompt"] == f"p{i}"
        assert s["reward"] == 10.0 + i  # the reward model's score where the run has one
        assert s["length"] == i + 1 and s["ended"] is (i % 2 == 0)
        assert s["kl"] == (0.5 if s["policy"] == "ppo" else 0.0)
        assert s["gold"] == float(len(s["response"]))
        assert "members" not in s  # one reward model: no members to list
    assert [(s["seed"], s["prompt_index"], s["policy"]) for s in samples[:6]] == [
        (0, 0, "sft"),
        (0, 1, "sft"),
        (0, 0, "ppo"),
        (0, 1, "ppo"),
        (0, 2, "sft"),
        (0, 2, "ppo"),
    ]
    assert _draw(0, 0) != _draw(7, 0) and _draw(0, 0) != _draw(0, 2)  # the seeds differ


def test_sample_policies_keeps_each_ensemble_members_score_beside_their_combination() -> None:
    samples = evaluation.sample_policies(StandInSampler(has_reward_model=True, members=3), ["p0", "p1"], [0])
    for s in samples:
        i = s["prompt_index"]
        assert s["members"] == [10.0 + i, 11.0 + i, 12.0 + i] and s["reward"] == 11.0 + i  # their mean


def test_sample_policies_scores_with_the_reward_functions_without_a_reward_model_and_no_gold_without_a_judge() -> None:
    samples = evaluation.sample_policies(StandInSampler(has_reward_model=False), ["p0", "p1"], [0])
    assert [s["reward"] for s in samples] == [20.0, 21.0, 20.0, 21.0]
    assert all("gold" not in s for s in samples)


def test_a_policys_scores_from_one_sample_have_no_standard_error() -> None:
    mean, stderr = evaluation._mean_and_stderr([3.0])
    assert (mean, stderr) == (3.0, 0.0)
    # two values 1, 3: sample sd sqrt(2), stderr sqrt(2) / sqrt(2) = 1
    assert evaluation._mean_and_stderr([1.0, 3.0]) == (2.0, pytest.approx(1.0))


def test_compare_needs_both_policies() -> None:
    sample = {"policy": "sft", "prompt_index": 0, "seed": 0, "reward": 0.0, "length": 1.0, "ended": True, "kl": 0.0}
    with pytest.raises(ValueError, match=r"^compare needs samples of both policies$"):
        evaluation.compare([sample])


def test_reward_calibration_bins_are_equal_width_and_the_top_bin_holds_certainty() -> None:
    # gaps 0 (p = .5, bin [.4, .6) of 5 bins, right 0: gap 0 is not > 0), 40 (p = 1.0 in float: the last bin)
    result = evaluation.reward_calibration([0.0, 40.0], [0.0, 0.0], bins=5, dataset="held-out")
    assert [(b.low, b.high, b.pairs) for b in result.bins] == [(0.4, 0.6, 1), (0.8, 1.0, 1)]
    assert [(b.claimed, b.observed) for b in result.bins] == [(0.5, 0.0), (1.0, 1.0)]
    assert result.ece == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)
    assert result.dataset == "held-out" and result.pairs == 2
    assert result.accuracy == 0.5  # a gap of 0 is not ranked right
    # the default is 5 bins: p = sigmoid(.5) = .62 falls in [.6, .8)
    default = evaluation.reward_calibration([0.5], [0.0])
    assert [(b.low, b.high) for b in default.bins] == [(0.6, 0.8)]
    assert default.bins[0].claimed == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_reward_calibration_bin_edges_belong_to_the_bin_above_and_lengths_must_match() -> None:
    # 2 bins: p = .5 (gap 0) is the low edge of [.5, 1.0), not the high edge of [0, .5)
    result = evaluation.reward_calibration([0.0], [0.0], bins=2)
    assert [(b.low, b.high, b.pairs) for b in result.bins] == [(0.5, 1.0, 1)]
    # a gap of .5 (in (0, 1]) is ranked right, in the bin and overall
    default = evaluation.reward_calibration([0.5], [0.0])
    assert default.accuracy == 1.0 and default.bins[0].observed == 1.0
    with pytest.raises(ValueError):
        evaluation.reward_calibration([1.0, 2.0], [1.0])


def _sample(policy: str, prompt: int, reward: float, length: float, gold: float | None = None) -> dict[str, Any]:
    sample = {"policy": policy, "prompt_index": prompt, "seed": 0, "reward": reward, "length": length}
    sample |= {"ended": True, "kl": 0.0 if policy == "sft" else 0.25}
    return sample if gold is None else {**sample, "gold": gold}


def test_compare_reports_every_score_with_its_standard_error() -> None:
    # rewards 1, 3 (mean 2, stderr 1) vs 0, 0; lengths 2, 4 (mean 3, stderr 1) vs 5, 5; golds 1, 0 vs 0, 1
    samples = [
        _sample("ppo", 0, 1.0, 2.0, gold=1.0),
        _sample("ppo", 1, 3.0, 4.0, gold=0.0),
        _sample("sft", 0, 0.0, 5.0, gold=0.0),
        _sample("sft", 1, 0.0, 5.0, gold=1.0),
    ]
    summary = evaluation.compare(samples)
    ppo = summary.ppo
    assert (ppo.reward, ppo.reward_stderr, ppo.length, ppo.length_stderr) == pytest.approx((2.0, 1.0, 3.0, 1.0))
    assert (ppo.gold, ppo.gold_stderr) == pytest.approx((0.5, 0.5))  # golds 1, 0: sd sqrt(.5), / sqrt(2)
    assert (summary.sft.reward_stderr, summary.sft.gold) == (0.0, 0.5)
    # each policy's two answers are to different prompts: no pair to order, no accuracy
    assert summary.reward_model_accuracy == {"sft": None, "ppo": None}
    without_gold = evaluation.compare([{k: v for k, v in s.items() if k != "gold"} for s in samples])
    assert without_gold.ppo.gold is None and without_gold.ppo.gold_stderr is None and "gold" not in without_gold.gain


def test_compare_measures_the_reward_model_per_policy() -> None:
    samples = [_sample("ppo", 0, r, 1.0, gold=g) for r, g in ((1.0, 1.0), (0.0, 0.0))]
    samples += [_sample("sft", 0, r, 1.0, gold=g) for r, g in ((1.0, 0.0), (0.0, 1.0))]
    for s, seed in zip(samples, (0, 1, 0, 1), strict=True):
        s["seed"] = seed
    assert evaluation.compare(samples).reward_model_accuracy == {"sft": 0.0, "ppo": 1.0}


def test_one_pair_and_no_pairs() -> None:
    one = [_sample("ppo", 0, 2.0, 1.0, gold=1.0), _sample("sft", 0, 1.0, 1.0, gold=1.0)]
    assert evaluation.paired_win_rates(one)["reward"].win_rate == 1.0
    assert evaluation.paired_win_rates(one)["gold"].ties == 1.0
    assert evaluation.paired_gains(one)["reward"].mean == 1.0
    summary = evaluation.compare(one)  # one answer per policy
    assert (summary.ppo.gold, summary.ppo.gold_stderr, summary.prompts) == (1.0, 0.0, 1)
    only_ppo = one[:1]
    assert evaluation.paired_win_rates(only_ppo) == {} and evaluation.paired_gains(only_ppo) == {}


def test_paired_difference_subtracts_and_checks_its_inputs() -> None:
    assert evaluation.paired_difference([5.0, 7.0], [1.0, 2.0]).mean == pytest.approx(4.5)
    for first, second in (([1.0, 2.0], [1.0]), ([], [])):
        with pytest.raises(ValueError, match=r"^paired_difference needs two non-empty sequences of paired scores$"):
            evaluation.paired_difference(first, second)


def test_reward_model_accuracy_groups_by_prompt() -> None:
    # prompt 0: rewards order its two answers as the golds do; prompt 1 too. Pooled across prompts,
    # answer (r 1, gold 1) of prompt 0 against (r 3, gold 0) of prompt 1 would count as wrong.
    samples = [
        _sample("ppo", 0, 1.0, 1.0, gold=1.0),
        _sample("ppo", 0, 0.0, 1.0, gold=0.0),
        _sample("ppo", 1, 3.0, 1.0, gold=0.0),
        _sample("ppo", 1, 2.0, 1.0, gold=-5.0),
    ]
    assert evaluation.reward_model_accuracy(samples) == 1.0
    assert evaluation.reward_model_accuracy(samples[:1]) is None  # one answer: no pair
    assert evaluation.reward_model_accuracy([]) is None


def test_win_rate_is_reproducible_and_counts_wins() -> None:
    """The bootstrap is seeded (seed 0 by default): the same pairs give the same interval at every level."""
    first = [1.0] * 86 + [0.5] * 20 + [0.0] * 94
    levels = (0.5, 0.9, 0.99)
    once = [evaluation.win_rate(first, [0.5] * 200, confidence=c) for c in levels]
    again = [evaluation.win_rate(first, [0.5] * 200, n_boot=2000, seed=0, confidence=c) for c in levels]
    assert [(r.ci_low, r.ci_high) for r in once] == [(r.ci_low, r.ci_high) for r in again]
    result = evaluation.win_rate([3.0, 2.0, 5.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    assert (result.wins, result.ties, result.losses, result.pairs) == (3.0, 0.0, 1.0, 4.0)
    # confidence 1: the interval is the bootstrap's whole range, inside [0, 1]
    full = evaluation.win_rate([1.0, 0.0] * 20, [0.5] * 40, confidence=1.0)
    assert 0.0 <= full.ci_low <= 0.5 <= full.ci_high <= 1.0
    with pytest.raises(ValueError, match=r"^win_rate needs two non-empty sequences of paired scores$"):
        evaluation.win_rate([1.0], [])
