"""Which candidate sets to send to annotators, and how well the reward model ranks the policy's answers.

Annotation is the expensive part of RLHF, so from the second round on the pipeline samples more
candidate sets than the round's budget pays for and lets a selector choose (pure functions here,
no torch: the pipeline hands in the reward model's scores):

* ``random``: a seeded uniform draw, the baseline;
* ``uncertainty``: the sets whose candidates the current reward model can least tell apart. A
  ranking of K candidates becomes K(K-1)/2 preference pairs, so a set's uncertainty is the mean,
  over its pairs, of how close the reward model's Bradley-Terry probability
  ``sigmoid(r_i - r_j)`` is to a coin flip (``1 - |2p - 1|``: 1 when the scores are equal, near 0
  when the model is sure of every pair). Sets with the highest uncertainty go to annotators: those
  are the rankings that teach the reward model most about the current policy's answers (active
  learning by uncertainty sampling, as in Christiano et al. 2017 with an ensemble's disagreement).

* ``disagreement``: with a reward ensemble (``--reward.ensemble_size K``), the sets whose answers its
  members disagree on most: the mean, over the set's answers, of the standard deviation of the
  members' standardised scores (the ensemble's epistemic uncertainty, as Christiano et al. 2017 used
  it). Where ``uncertainty`` asks "which answers can the reward model not tell apart", this asks
  "which answers does the reward model not know how to score": the blind spots a policy exploits.

Every selector records every chosen set's score, so the report can show what each bought.

:func:`ranking_accuracy` measures the reward model where the policy now samples: over answers to
the same prompt, the share of pairs the gold judge separates that the reward model orders the
same way. A reward model trained on the SFT model's answers loses this accuracy as the policy
drifts; rounds of annotation on the current policy's answers are meant to restore it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import combinations

SELECTORS = ("random", "uncertainty", "disagreement")
FIRST_ROUND = "sequential"  # round 1: no reward model yet, the prompts in the order the dataset gives them


def preference_probability(first: float, second: float) -> float:
    """Bradley-Terry probability that ``first`` is preferred, from two reward scores (overflow-safe)."""
    margin = first - second
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    exp = math.exp(margin)
    return exp / (1.0 + exp)


def uncertainty(scores: Sequence[float]) -> float:
    """Mean over the set's pairs of ``1 - |2 p - 1|`` (1: a coin flip on every pair; 0: certain)."""
    if len(scores) < 2:
        raise ValueError(f"uncertainty needs at least 2 scored candidates, got {len(scores)}")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"uncertainty: non-finite reward score in {list(scores)}")
    pairs = list(combinations(scores, 2))
    return sum(1.0 - abs(2.0 * preference_probability(a, b) - 1.0) for a, b in pairs) / len(pairs)


def disagreement(member_scores: Sequence[Sequence[float]]) -> float:
    """Mean over a set's answers of the population std of the ensemble members' scores (``K`` lists of ``n``)."""
    if len(member_scores) < 2:
        raise ValueError(f"disagreement needs the scores of at least 2 ensemble members, got {len(member_scores)}")
    answers = list(zip(*member_scores, strict=True))
    if not answers or not all(math.isfinite(s) for scores in answers for s in scores):
        raise ValueError(f"disagreement: no answers, or a non-finite score in {list(member_scores)}")
    spreads = [math.sqrt(sum((s - sum(a) / len(a)) ** 2 for s in a) / len(a)) for a in answers]
    return sum(spreads) / len(spreads)


def select(uncertainties: Sequence[float], k: int, method: str, seed: int = 0) -> list[int]:
    """Indices (ascending) of the ``k`` candidate sets to annotate, out of the pool scored by ``uncertainties``.

    ``uncertainty`` and ``disagreement`` take the ``k`` sets with the highest score (the selector's own:
    :func:`uncertainty` or :func:`disagreement`; ties: the earlier set); ``random`` draws ``k``
    uniformly with ``seed``, ignoring the scores.
    """
    if method not in SELECTORS:
        raise ValueError(f"select: unknown selector {method!r}; choose from {', '.join(SELECTORS)}")
    if not 0 <= k <= len(uncertainties):
        raise ValueError(f"select: cannot choose {k} of {len(uncertainties)} candidate sets")
    if method == "random":
        return sorted(random.Random(seed).sample(range(len(uncertainties)), k))
    order = sorted(range(len(uncertainties)), key=lambda i: (-uncertainties[i], i))
    return sorted(order[:k])


def ranking_accuracy(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float | None, int]:
    """How often the reward model orders two answers to one prompt as the gold judge does.

    ``groups``: per prompt, (reward-model scores, gold scores) of its answers. Pairs the gold judge
    scores equal are skipped (no right order); a reward-model tie counts half. Returns the accuracy
    (``None`` without a single separable pair) and the number of pairs it is over.
    """
    correct = 0.0
    pairs = 0
    for rewards, golds in groups:
        if len(rewards) != len(golds):
            raise ValueError(f"ranking_accuracy: {len(rewards)} reward scores for {len(golds)} gold scores")
        for i, j in combinations(range(len(golds)), 2):
            if golds[i] == golds[j]:
                continue
            pairs += 1
            agreement = (rewards[i] - rewards[j]) * (golds[i] - golds[j])
            correct += 1.0 if agreement > 0 else 0.5 if rewards[i] == rewards[j] else 0.0
    return (correct / pairs if pairs else None), pairs
