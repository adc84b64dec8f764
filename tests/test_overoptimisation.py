"""The over-optimisation detector on synthetic RL histories (no training)."""

from __future__ import annotations

import pytest

from rlhf import overoptimisation


def history(scores: list[float], kls: list[float], **extra: list[float]) -> list[dict[str, float]]:
    rows = []
    for i, (score, kl) in enumerate(zip(scores, kls, strict=True)):
        row = {"step": float(i + 1), "objective/score": score, "objective/kl": kl}
        row["objective/rlhf_reward"] = score - 0.05 * kl
        row.update({key: values[i] for key, values in extra.items()})
        rows.append(row)
    return rows


# the main job's shape: the score rises for 20 iterations and then stays flat while KL keeps climbing
RISE = [1.0 + 0.1 * i for i in range(20)]
SATURATED = RISE + [3.0] * 20
CLIMBING_KL = [0.1 * i for i in range(20)] + [2.0 + 0.25 * i for i in range(20)]


def test_a_flat_reward_with_a_rising_kl_is_flagged_where_it_starts() -> None:
    found = overoptimisation.detect(history(SATURATED, CLIMBING_KL), checkpoints=[20, 40])
    assert len(found.flags) == 1 and "flat" in found.flags[0] and "KL" in found.flags[0]
    # replayed iteration by iteration: it shows a window after the score stops rising, not at the end
    assert found.first_flagged is not None and 22 <= found.first_flagged <= 30
    assert overoptimisation.check(history(SATURATED, CLIMBING_KL))  # what the trainer sees at the last step
    # the conservative reward (score - 0.05 KL) peaks where the score saturates, before KL runs away
    assert found.conservative_metric == "objective/rlhf_reward"
    assert found.peak_step is not None and 20 <= found.peak_step <= 26
    assert found.peak_checkpoint == "checkpoint-20"


def test_a_reward_still_rising_or_a_steady_kl_is_not_flagged() -> None:
    rising = [1.0 + 0.05 * i for i in range(40)]
    assert overoptimisation.detect(history(rising, CLIMBING_KL)).flags == []
    steady_kl = [0.1 * i for i in range(20)] + [2.0] * 20
    assert overoptimisation.detect(history(SATURATED, steady_kl)).flags == []
    assert overoptimisation.detect(history(SATURATED[:8], CLIMBING_KL[:8])).flags == []  # too short to judge
    assert overoptimisation.detect([]).peak_step is None


def test_rising_disagreement_of_a_flat_ensemble_is_flagged() -> None:
    spread = [0.3] * 25 + [0.3 + 0.05 * i for i in range(15)]
    steady_kl = [0.1 * i for i in range(20)] + [2.0] * 20
    found = overoptimisation.detect(history(SATURATED, steady_kl, **{"reward/ensemble_std": spread}))
    assert len(found.flags) == 1 and "disagree" in found.flags[0]


def test_without_a_kl_the_score_is_the_conservative_reward_and_the_nearest_checkpoint_is_named() -> None:
    rows = [{"step": float(i + 1), "objective/score": s} for i, s in enumerate([0.0, 1.0, 3.0, 3.0, 3.0, 1.0, 0.0])]
    found = overoptimisation.detect(rows, checkpoints=[2, 6], window=1)
    assert found.conservative_metric == "objective/score" and found.peak_step == 3
    assert found.peak_value == pytest.approx(3.0) and found.peak_checkpoint == "checkpoint-2"
