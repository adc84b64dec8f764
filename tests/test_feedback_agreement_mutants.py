"""Agreement's edges the mutation run (scripts/mutation.py) found unguarded, against hand-computed values."""

from __future__ import annotations

import pytest

from feedback.agreement import QuestionAgreement, agreement, alpha, coincidences, format_table, percent_agreement
from feedback.records import Answer, Candidate, Item


def test_two_values_are_enough_for_alpha() -> None:
    # one unit, values 1 and 2: o_12 = o_21 = 1, n_1 = n_2 = 1, n = 2; D_o = 2/2 = 1, D_e = 2/(2*1) = 1 -> 0
    assert alpha({1: {"x": 1, "y": 2}}) == 0.0


def test_units_with_one_value_are_skipped_not_the_end() -> None:
    assert coincidences({1: {"x": "a"}, 2: {"x": "a", "y": "b"}}) == {("a", "b"): 1.0, ("b", "a"): 1.0}
    assert percent_agreement({1: {"x": "a"}}) is None  # no pair at all
    assert percent_agreement({}) is None


def test_unknown_level_error_names_the_levels() -> None:
    with pytest.raises(ValueError, match=r"^level must be one of \('nominal', 'ordinal', 'interval'\), got 'ratio'$"):
        alpha({}, "ratio")


def test_the_ranking_question_uses_the_ordinal_distance() -> None:
    # three annotators rank three candidates; the units (a candidate's ranks) give different alphas at the
    # nominal and the ordinal level (both checked by hand in test_feedback_agreement.py): the ranking row is ordinal
    ranked = Item(
        2,
        [],
        (Candidate(4, "d"), Candidate(5, "e"), Candidate(6, "f")),
        (
            Answer("x", ranks={4: 1, 5: 2, 6: 3}),
            Answer("y", ranks={4: 2, 5: 1, 6: 3}),
            Answer("z", ranks={4: 1, 5: 3, 6: 2}),
        ),
    )
    units = {4: {"x": 1, "y": 2, "z": 1}, 5: {"x": 2, "y": 1, "z": 3}, 6: {"x": 3, "y": 3, "z": 2}}
    assert alpha(units, "ordinal") != pytest.approx(alpha(units, "nominal"))
    _, ranking = agreement([ranked])
    assert (ranking.question, ranking.level) == ("ranking", "ordinal")
    assert ranking.alpha == pytest.approx(alpha(units, "ordinal"))


def test_format_table() -> None:
    rows = [
        QuestionAgreement("thumbs", "nominal", 12, 3, 0.5, 0.75),
        QuestionAgreement("ranking", "ordinal", 0, 1, None, None),
    ]
    assert format_table(rows).splitlines() == [
        "question   level     units annotators   alpha  agree%",
        "thumbs     nominal      12          3   0.500    75.0",
        "ranking    ordinal       0          1     n/a     n/a",
    ]
