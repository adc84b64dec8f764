"""Inter-annotator agreement: Krippendorff's alpha, per question, as pure functions.

Alpha suits annotation data better than Cohen's or Fleiss' kappa: any number of annotators, items
answered by different subsets of them, missing answers, and a distance that fits the question
(nominal for thumbs up/down, ordinal for ranks). ``alpha = 1 - D_o / D_e``: 1 is perfect
agreement, 0 is what chance gives, below 0 systematic disagreement.

The computation follows Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): a
coincidence matrix ``o[c][k]`` counts, within every unit answered by ``m >= 2`` coders, each
ordered pair of values ``(c, k)`` from different coders with weight ``1 / (m - 1)``; ``n_c`` are
its margins and ``n`` its total. Then

    D_o = sum_{c,k} o[c][k] * delta2(c, k) / n
    D_e = sum_{c,k} n_c * n_k * delta2(c, k) / (n * (n - 1))

with ``delta2`` = 0/1 (nominal), ``(sum_{g=c..k} n_g - (n_c + n_k) / 2)^2`` (ordinal) or
``(c - k)^2`` (interval).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedback.records import Item

LEVELS = ("nominal", "ordinal", "interval")

# unit -> {coder: value}
Units = Mapping[Any, Mapping[Any, Any]]  # {unit: {coder: value}}, any hashable keys


def coincidences(units: Units) -> dict[tuple[Any, Any], float]:
    """The coincidence matrix ``o[(c, k)]`` of the pairable units (those with two or more values)."""
    matrix: dict[tuple[Any, Any], float] = defaultdict(float)
    for values in units.values():
        observed = list(values.values())
        m = len(observed)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            matrix[(observed[i], observed[j])] += 1.0 / (m - 1)
    return dict(matrix)


def _distance(level: str, order: Sequence[Any], totals: Mapping[Any, float]) -> dict[tuple[Any, Any], float]:
    """delta^2 for every pair of values present."""
    position = {value: i for i, value in enumerate(order)}
    out: dict[tuple[Any, Any], float] = {}
    for c, k in itertools.product(order, repeat=2):
        if level == "nominal":
            out[(c, k)] = 0.0 if c == k else 1.0
        elif level == "interval":
            out[(c, k)] = float(c - k) ** 2
        else:  # ordinal
            low, high = sorted((position[c], position[k]))
            between = sum(totals[order[g]] for g in range(low, high + 1))
            out[(c, k)] = (between - (totals[c] + totals[k]) / 2) ** 2
    return out


def alpha(units: Units, level: str = "nominal") -> float | None:
    """Krippendorff's alpha of ``units`` (``{unit: {coder: value}}``), or None when it is undefined.

    Undefined: fewer than two pairable values, or no variation at all (every value the same), in
    which case agreement cannot be told apart from chance. Ordinal and interval values must sort.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    matrix = coincidences(units)
    totals: dict[Any, float] = defaultdict(float)
    for (c, _), weight in matrix.items():
        totals[c] += weight
    n = sum(totals.values())
    if n < 2:
        return None
    order = sorted(totals)
    delta = _distance(level, order, totals)
    observed = sum(weight * delta[pair] for pair, weight in matrix.items()) / n
    expected = sum(totals[c] * totals[k] * delta[(c, k)] for c in order for k in order) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def percent_agreement(units: Units) -> float | None:
    """Share of pairs of coders, over pairable units, who gave the same value (the naive measure)."""
    same = total = 0
    for values in units.values():
        for a, b in itertools.combinations(list(values.values()), 2):
            total += 1
            same += a == b
    return same / total if total else None


# ----------------------------------------------------------------------------------------------
# The feedback questions as alpha units


def thumbs_units(items: Sequence[Item]) -> dict[int, dict[str, bool]]:
    """Thumbs: a unit per candidate, a value per annotator who rated it (nominal)."""
    units: dict[int, dict[str, bool]] = defaultdict(dict)
    for item in items:
        for answer in item.answers:
            for candidate_id, up in answer.thumbs.items():
                units[candidate_id][answer.annotator] = up
    return dict(units)


def rank_units(items: Sequence[Item]) -> dict[int, dict[str, int]]:
    """Rankings: a unit per candidate, its (dense) rank from each annotator who ranked it (ordinal)."""
    units: dict[int, dict[str, int]] = defaultdict(dict)
    for item in items:
        for answer in item.answers:
            for candidate_id, rank in answer.ranks.items():
                units[candidate_id][answer.annotator] = rank
    return dict(units)


@dataclass(frozen=True)
class QuestionAgreement:
    question: str
    level: str
    units: int  # units answered by two or more annotators
    annotators: int
    alpha: float | None
    percent_agreement: float | None


def _summary(question: str, level: str, units: Mapping[int, Mapping[str, Any]]) -> QuestionAgreement:
    pairable = {u: v for u, v in units.items() if len(v) >= 2}
    coders = {coder for values in units.values() for coder in values}
    return QuestionAgreement(
        question=question,
        level=level,
        units=len(pairable),
        annotators=len(coders),
        alpha=alpha(pairable, level),
        percent_agreement=percent_agreement(pairable),
    )


def agreement(items: Sequence[Item]) -> list[QuestionAgreement]:
    """Agreement per question: thumbs (nominal alpha) and ranking (ordinal alpha)."""
    return [
        _summary("thumbs", "nominal", thumbs_units(items)),
        _summary("ranking", "ordinal", rank_units(items)),
    ]


def format_table(rows: Sequence[QuestionAgreement]) -> str:
    """A plain-text table for the CLI."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{'question':<10} {'level':<8} {'units':>6} {'annotators':>10} {'alpha':>7} {'agree%':>7}"]
    for row in rows:
        percent = "n/a" if row.percent_agreement is None else f"{100 * row.percent_agreement:.1f}"
        lines.append(
            f"{row.question:<10} {row.level:<8} {row.units:>6} {row.annotators:>10} {number(row.alpha):>7} {percent:>7}"
        )
    return "\n".join(lines)
