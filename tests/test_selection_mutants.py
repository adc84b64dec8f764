"""Selection's pure functions at the edges the mutation run (scripts/mutation.py) found unguarded."""

from __future__ import annotations

import pytest

from rlhf import selection


def test_ranking_accuracy_goes_on_past_a_gold_tie_and_follows_the_gold_order() -> None:
    # golds 1, 1, 2: the first pair is a gold tie (skipped), the two after it count; rewards 0, 0, 1
    # order both the way the judge does (the higher gold is the later answer: sign(1 - 2) < 0)
    assert selection.ranking_accuracy([([0.0, 0.0, 1.0], [1.0, 1.0, 2.0])]) == (1.0, 2)
    # the same with the reward model backwards: both pairs wrong
    assert selection.ranking_accuracy([([1.0, 1.0, 0.0], [1.0, 1.0, 2.0])]) == (0.0, 2)


def test_random_selection_defaults_to_seed_zero() -> None:
    scores = [0.1, 0.9, 0.5, 0.9, 0.2, 0.3, 0.7]
    assert selection.select(scores, 3, "random") == selection.select(scores, 3, "random", seed=0)
    assert selection.select(scores, 3, "random") != selection.select(scores, 3, "random", seed=1)


def test_unknown_selector_error_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"^select: unknown selector 'margin'; choose from random, uncertainty, disagreement$"
    ):
        selection.select([0.5], 1, "margin")


def test_disagreement_refuses_members_that_scored_different_answers() -> None:
    """K lists of the same n answers: a member with fewer scores is an error, not a shorter comparison."""
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        selection.disagreement([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match=r"^disagreement: no answers, or a non-finite score in \[\[\], \[\]\]$"):
        selection.disagreement([[], []])
