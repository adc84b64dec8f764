"""Krippendorff's alpha against published and hand-computed values, and per question on records."""

from __future__ import annotations

import pytest

from feedback.agreement import agreement, alpha, coincidences, percent_agreement
from feedback.records import Answer, Candidate, Item

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with 4 observers,
# 12 units and missing values; the paper gives alpha = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval).
PAPER = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
PAPER_UNITS = {u: {c: PAPER[c][u] for c in range(4) if PAPER[c][u] is not None} for u in range(12)}


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_the_published_example(level: str, expected: float) -> None:
    assert alpha(PAPER_UNITS, level) == pytest.approx(expected, abs=5e-4)


def test_nominal_by_hand() -> None:
    # Two coders, units (a,a) (a,b) (b,b) (b,b): o_aa=2, o_ab=o_ba=1, o_bb=4; n_a=3, n_b=5, n=8.
    # D_o = 2/8; D_e = 2*3*5/(8*7) = 30/56; alpha = 1 - (2/8)/(30/56) = 1 - 112/240 = 8/15.
    units = {1: {"x": "a", "y": "a"}, 2: {"x": "a", "y": "b"}, 3: {"x": "b", "y": "b"}, 4: {"x": "b", "y": "b"}}
    assert coincidences(units) == {("a", "a"): 2.0, ("a", "b"): 1.0, ("b", "a"): 1.0, ("b", "b"): 4.0}
    assert alpha(units) == pytest.approx(8 / 15)
    assert percent_agreement(units) == 0.75


def test_ordinal_by_hand() -> None:
    # Units (1,1) (1,2) (2,3) (3,3): n_1=3, n_2=2, n_3=3, n=8. Ordinal delta^2: (1,2) = ((3+2)/2)^2 = 6.25,
    # (2,3) = 6.25, (1,3) = (3+2+3 - (3+3)/2)^2 = 25. D_o = 4*6.25/8 = 3.125;
    # D_e = 2*(3*2*6.25 + 2*3*6.25 + 3*3*25)/56 = 600/56; alpha = 1 - 3.125*56/600 = 17/24.
    units = {1: {"x": 1, "y": 1}, 2: {"x": 1, "y": 2}, 3: {"x": 2, "y": 3}, 4: {"x": 3, "y": 3}}
    assert alpha(units, "ordinal") == pytest.approx(17 / 24)
    assert alpha(units, "nominal") != pytest.approx(17 / 24)  # the distance matters


def test_undefined_cases() -> None:
    assert alpha({1: {"x": 1}, 2: {"y": 2}}) is None  # nothing pairable
    assert alpha({1: {"x": 1, "y": 1}, 2: {"x": 1, "y": 1}}) is None  # no variation at all
    with pytest.raises(ValueError):
        alpha({}, "ratio")


def test_agreement_per_question_from_records() -> None:
    candidates = (Candidate(1, "a"), Candidate(2, "b"), Candidate(3, "c"))
    agree = Item(1, [], candidates, (Answer("x", thumbs={1: True, 2: False}), Answer("y", thumbs={1: True, 2: False})))
    ranked = Item(
        2,
        [],
        (Candidate(4, "d"), Candidate(5, "e")),
        (Answer("x", ranks={4: 1, 5: 2}), Answer("y", ranks={4: 2, 5: 1}), Answer("z", ranks={4: 1, 5: 2})),
    )
    thumbs, ranking = agreement([agree, ranked])
    assert (thumbs.question, thumbs.units, thumbs.annotators, thumbs.alpha) == ("thumbs", 2, 2, 1.0)
    assert ranking.level == "ordinal" and ranking.units == 2 and ranking.annotators == 3
    assert ranking.alpha is not None and ranking.alpha < 0.5 and ranking.percent_agreement == pytest.approx(1 / 3)
