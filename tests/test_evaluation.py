"""Evaluation arithmetic (win rates, calibration, summaries) and the eval stage on a small PPO run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ppo_args

from rlhf import evaluation
from rlhf.results import EvalResult, PPOResult
from rlhf.stages import evaluate, ppo


def test_win_rate_counts_ties_as_half_and_brackets_the_rate() -> None:
    result = evaluation.win_rate([1, 2, 3, 5], [0, 2, 4, 1])  # win, tie, loss, win
    assert result.win_rate == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.ci_low <= result.win_rate <= result.ci_high
    certain = evaluation.win_rate([1.0] * 50, [0.0] * 50)
    assert certain.ci_low == certain.ci_high == 1.0
    with pytest.raises(ValueError, match="paired"):
        evaluation.win_rate([1.0], [])


def test_win_rate_interval_narrows_with_more_pairs() -> None:
    small = evaluation.win_rate([1, 0] * 10, [0, 1] * 10)
    large = evaluation.win_rate([1, 0] * 500, [0, 1] * 500)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low


@pytest.mark.parametrize(("confidence", "z"), [(None, 1.959964), (0.90, 1.644854)])  # None: the default, 95 %
def test_win_rate_interval_has_its_stated_level(confidence: float | None, z: float) -> None:
    """The bootstrap interval of 1000 pairs matches the normal interval p +- z * sd / sqrt(n), worked by hand.

    With 450 wins, 100 ties and 450 losses the outcomes (1, .5, 0) have mean .5 and variance
    (.9 * .25) = .225, so the 95 % interval is .5 +- 1.96 * sqrt(.225 / 1000) = .5 +- .0294 (the 50 %
    one would be +- .0101); the percentile bootstrap agrees to within its resampling noise.
    """
    first = [1.0] * 450 + [0.5] * 100 + [0.0] * 450
    level = {} if confidence is None else {"confidence": confidence}
    result = evaluation.win_rate(first, [0.5] * 1000, **level)
    half_width = z * math.sqrt(0.9 * 0.25 / 1000)
    assert result.win_rate == pytest.approx(0.5)
    assert result.ci_low == pytest.approx(0.5 - half_width, abs=0.004)
    assert result.ci_high == pytest.approx(0.5 + half_width, abs=0.004)


def test_paired_difference_interval_is_the_mean_plus_minus_1_96_standard_errors() -> None:
    # differences 1, 2, 3, 6: mean 3, sample sd sqrt(((-2)^2 + 1 + 0 + 9) / 3) = sqrt(14 / 3), se = sd / 2
    result = evaluation.paired_difference([1.0, 2.0, 3.0, 6.0], [0.0] * 4)
    se = math.sqrt(14 / 3) / 2
    assert (result.mean, result.ci_low, result.ci_high) == pytest.approx((3.0, 3 - 1.96 * se, 3 + 1.96 * se))


def test_reward_calibration_by_hand() -> None:
    # gaps 4, 4, -4: claimed P(chosen) = sigmoid(4) = .982 for two pairs (both right), .018 for one (wrong)
    result = evaluation.reward_calibration([4.0, 4.0, 0.0], [0.0, 0.0, 4.0], bins=5)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.mean_gap == pytest.approx(4 / 3)
    p = 1 / (1 + math.exp(-4))
    assert result.ece == pytest.approx(2 / 3 * (1 - p) + 1 / 3 * (1 - p))
    assert [b.pairs for b in result.bins] == [1, 2]


def test_summary_and_paired_win_rates() -> None:
    samples = []
    for i in range(3):
        samples.append(
            {
                "policy": "sft",
                "prompt_index": i,
                "seed": 0,
                "reward": 0.0,
                "gold": 0.0,
                "length": 5.0,
                "ended": True,
                "kl": 0.0,
            }
        )
        samples.append(
            {
                "policy": "ppo",
                "prompt_index": i,
                "seed": 0,
                "reward": 1.0,
                "gold": float(i > 0),
                "length": 7.0,
                "ended": i != 2,
                "kl": 0.5,
            }
        )
    summary = evaluation.compare(samples)
    assert summary.ppo.eos_rate == pytest.approx(2 / 3) and summary.kl_ppo_to_sft == pytest.approx(0.5)
    assert summary.prompts == 3 and summary.seeds == [0]
    assert summary.sft.gold == 0.0 and summary.ppo.gold == pytest.approx(2 / 3)
    assert summary.win_rate["reward"].win_rate == 1.0
    assert summary.win_rate["gold"].win_rate == pytest.approx((0.5 + 1 + 1) / 3)
    # paired gains: gold differences 0, 1, 1 (mean 2/3, sd sqrt(1/3), stderr 1/3); reward always +1
    gold = summary.gain["gold"]
    assert (gold.mean, gold.ci_low, gold.ci_high, gold.pairs) == pytest.approx(
        (2 / 3, 2 / 3 - 1.96 / 3, 2 / 3 + 1.96 / 3, 3)
    )
    assert (summary.gain["reward"].ci_low, summary.gain["reward"].ci_high) == pytest.approx((1.0, 1.0))
    assert (
        EvalResult.from_json(
            EvalResult(**vars(summary), output_dir="o", ppo_dir="p", prompts_dataset="d").to_json()
        ).win_rate
        == summary.win_rate
    )


def test_rouge_through_evaluate_offline() -> None:
    scores = evaluation.rouge(["Sure! 3 plus 4 is 7."], ["Sure! 3 plus 4 is 7. Hope that helps!"])
    assert 0.6 < scores["rougeL"] < 1.0 and set(scores) == {"rouge1", "rouge2", "rougeL"}


def test_rouge_is_the_hand_computed_f_measure_and_leaves_numpys_generator_as_it_found_it() -> None:
    # one row: every bootstrap sample is that row. "a b c" vs "a b d": 2 of 3 words, 1 of 2 bigrams, LCS 2
    assert evaluation.rouge(["a b c"], ["a b d"]) == pytest.approx({"rouge1": 2 / 3, "rouge2": 0.5, "rougeL": 2 / 3})
    np.random.seed(7)
    state = np.random.get_state()
    rows = (["the cat sat", "a dog", "the mat is red", "sure"], ["the cat sat down", "the dog", "a red mat", "no"])
    first = evaluation.rouge(*rows)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state, after, strict=True))  # the caller's draws are unchanged
    assert evaluation.rouge(*rows) == first  # the same state, the same bootstrap


@pytest.mark.slow
def test_eval_stage_on_a_small_ppo_run(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    ppo_dir = tmp_path / "ppo"
    ppo.main(ppo_args(ppo_dir, tiny_sft_run, tiny_reward_run, "--steps", "2", "--eval_max_prompts", "0"))
    assert PPOResult.read(ppo_dir).eval is None  # 0 prompts: the stage skips its own comparison
    result = evaluate.main(
        [
            "--run_dir",
            str(ppo_dir),
            "--output_dir",
            str(tmp_path / "eval"),
            "--seeds",
            "0",
            "1",
            "--max_prompts",
            "12",
            "--max_pairs",
            "40",
            "--disable_tqdm",
            "true",
        ]
    )
    assert result.prompts == 12 and result.seeds == [0, 1]
    assert result.win_rate["gold"].pairs == 24 and result.win_rate["reward"].pairs == 24
    assert result.rouge is not None and set(result.rouge) == {"sft", "ppo"}
    assert result.reward_model is not None and result.reward_model.pairs == 40 and 0 <= result.reward_model.ece <= 1
    assert EvalResult.read(tmp_path / "eval") == result  # metrics.json reads back as the result the stage returned
    assert len((tmp_path / "eval" / evaluate.SAMPLES_FILE).read_text().splitlines()) == 2 * 12 * 2
