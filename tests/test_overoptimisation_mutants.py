"""The over-optimisation detector's rules at their edges, on short histories worked out by hand.

Window 2 throughout (the detector's default is 5): a smoothed value is the mean of a value and the one
before it, so every figure below can be checked on paper. Steps start at 11, so an iteration's step is
never its index. Scores, KLs and spreads are sums of powers of two: no comparison depends on rounding.
"""

from __future__ import annotations

import pytest

from rlhf import overoptimisation
from rlhf.overoptimisation import KL, SCORE, SPREAD

# score 0, 2, 6, 6, 6.5, 6.5 -> smoothed 0, 1, 4, 6, 6.25, 6.5: it rose 6 by the 4th iteration, then 0.5 (< 10%)
FLAT = [0.0, 2.0, 6.0, 6.0, 6.5, 6.5]
# KL smoothed 0, 0.5, 1, 1.5, 2.5, 4: 1.5 -> 4 over the last 2 iterations (> 10% more)
RISING_KL = [0.0, 1.0, 1.0, 2.0, 3.0, 5.0]
# spread smoothed 0.5, 0.75, 1, 1.25, 1.75, 3: 1.25 -> 3
RISING_SPREAD = [0.5, 1.0, 1.0, 1.5, 2.0, 4.0]


def rows(score: list[float] | None = None, kl: list[float] | None = None, spread: list[float] | None = None) -> list:
    length = len(next(v for v in (score, kl, spread) if v is not None))
    history = []
    for i in range(length):
        row = {"step": float(11 + i)}
        for key, values in ((SCORE, score), (KL, kl), (SPREAD, spread)):
            if values is not None:
                row[key] = values[i]
        history.append(row)
    return history


def flags(history: list, flat: float = 0.1, rising: float = 0.1) -> list[str]:
    return overoptimisation.check(history, window=2, flat=flat, rising=rising)


def test_trailing_means_by_hand() -> None:
    assert overoptimisation._smoothed([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert overoptimisation._smoothed([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]


def test_each_flag_says_where_and_by_how_much() -> None:
    history = rows(FLAT, RISING_KL, RISING_SPREAD)
    expected = [
        "iteration 16: the reward model's score is flat (6.00 -> 6.50 over the last 2 iterations) while KL to the "
        "SFT model rose 1.50 -> 4.00 nats: the policy is moving for nothing the reward model can see",
        "iteration 16: the reward ensemble's members disagree more (1.25 -> 3.00) while its score is flat: the "
        "policy is exploiting what the members learnt differently",
    ]
    assert flags(history) == expected
    # replayed: neither flag holds before the last iteration (smoothed score 4 -> 6.25 at the 5th: still rising)
    found = overoptimisation.detect(history, window=2)
    assert found.flags == expected and found.first_flagged == 16


def test_a_history_is_judged_from_two_windows_and_the_last_iterations_metrics() -> None:
    # 4 iterations = 2 windows: score smoothed 0, 2, 3, 2 (rose 2, then 0); KL smoothed 1, 1, 1.5, 3
    shortest = rows([0.0, 4.0, 2.0, 2.0], [1.0, 1.0, 2.0, 4.0])
    assert len(flags(shortest)) == 1 and flags(shortest[:3]) == []
    # the last iteration logged no score: nothing to judge (the KL of the others is not read)
    assert flags([*shortest, {"step": 15.0, KL: 5.0}]) == []
    # nor a KL or a spread: only the score's flatness is known, and no flag
    history = rows(FLAT, RISING_KL, RISING_SPREAD)
    history[-1] = {"step": 16.0, SCORE: 6.5}
    assert flags(history) == []


@pytest.mark.parametrize(
    ("score", "flat", "flagged"),
    [
        # smoothed 0, .25, .5, .5, .515625, .53125: rose .5 then .03125 (< 10% of .5, >= 10% of .25): flat
        ([0.0, 0.5, 0.5, 0.5, 0.53125, 0.53125], 0.1, True),
        # smoothed 0, .25, .75, 1, 1.03125, 1.10546875: rose 1 then .10546875 (>= 10% of 1): still rising
        ([0.0, 0.5, 1.0, 1.0, 1.0625, 1.1484375], 0.1, False),
        # smoothed 0, 0, .5, 1, 1.125, 1.25: rose 1 then exactly 25% of it: not flat (below 25% is)
        ([0.0, 0.0, 1.0, 1.0, 1.25, 1.25], 0.25, False),
        # smoothed 1, 1, .75, .5, .375, .25: it never rose, so it cannot have stopped rising
        ([1.0, 1.0, 0.5, 0.5, 0.25, 0.25], 0.1, False),
    ],
)
def test_flat_means_a_rise_so_far_then_under_a_share_of_it(score: list[float], flat: float, flagged: bool) -> None:
    kl = [1.0, 1.0, 1.0, 1.0, 4.0, 8.0]  # smoothed 1 -> 6 over the last 2 iterations: KL rises in every case
    assert bool(flags(rows(score, kl), flat=flat)) is flagged


@pytest.mark.parametrize(
    ("values", "rising", "flagged"),
    [
        ([0.0, 0.0, 0.0, 0.0, 1.0, 2.0], 0.1, False),  # smoothed 0 -> 1.5: from nothing, not a relative rise
        ([0.5, 0.5, 0.5, 0.5, 1.0, 2.0], 0.1, True),  # 0.5 -> 1.5
        ([0.5, 0.5, 0.5, 0.5, 1.0, 1.0], 1.0, False),  # 0.5 -> 1.0: exactly double is not more than double
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 0.1, False),  # steady
    ],
)
def test_kl_and_disagreement_must_rise_by_more_than_a_share(values: list[float], rising: float, flagged: bool) -> None:
    assert bool(flags(rows(FLAT, kl=values), rising=rising)) is flagged
    assert bool(flags(rows(FLAT, spread=values), rising=rising)) is flagged


def test_the_default_window_is_five_iterations() -> None:
    rise = [1.0 + 0.1 * i for i in range(20)]
    history = rows(rise + [3.0] * 20, [0.1 * i for i in range(20)] + [2.0 + 0.25 * i for i in range(20)])
    assert "over the last 5 iterations" in overoptimisation.check(history)[0]
    assert "over the last 5 iterations" in overoptimisation.detect(history).flags[0]
    # a score still rising by half its rise so far is not flat at the default 10%
    still = rows([1.0 + 0.05 * i for i in range(40)], [0.1 * i for i in range(40)])
    assert overoptimisation.check(still) == [] and overoptimisation.check(still, flat=0.6) != []
    # the peak of the conservative reward is a mean over 5 iterations: 6 / 5 at the last one
    assert overoptimisation.detect(rows([0.0, 0.0, 0.0, 0.0, 0.0, 6.0])).peak_value == pytest.approx(1.2)


def test_the_peak_is_read_from_the_last_iterations_metric_and_named_by_its_nearest_checkpoint() -> None:
    one = overoptimisation.detect([{"step": 7.0, SCORE: 0.5}])
    assert (one.conservative_metric, one.peak_step, one.peak_value) == (SCORE, 7, 0.5)
    # no score logged at all: no peak and no flag, not an error
    none = overoptimisation.detect(rows(kl=RISING_KL), checkpoints=[12])
    assert none.conservative_metric is None and none.peak_step is None and none.peak_value is None
    assert none.peak_checkpoint is None and none.flags == [] and none.first_flagged is None
    # window 1: the peak is step 15; checkpoints 12 and 16 -> 16, the nearest; 14 and 16 -> 14, the earlier of two
    peaked = rows([0.0, 1.0, 2.0, 3.0, 9.0, 3.0, 2.0])
    assert overoptimisation.detect(peaked, checkpoints=[12, 16], window=1).peak_checkpoint == "checkpoint-16"
    assert overoptimisation.detect(peaked, checkpoints=[16, 14], window=1).peak_checkpoint == "checkpoint-14"
