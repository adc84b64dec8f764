"""Simulated annotators: a judge function ranks candidates through the same store API people use.

The pipeline's ``--annotator simulated`` mode stands in for people with a task's gold judge (the
tiny task's ``rlhf.tiny.task:score``), optionally with noise, so the whole loop (store, queue,
overlap, idempotent submissions, export) is exercised exactly as in a real annotation campaign.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from feedback.store import NotFound, Store, dense_ranks

Judge = Callable[[Any, str], float]


def rank_by_score(scores: Mapping[int, float]) -> dict[int, int]:
    """Ranks from scores, 1 = best; equal scores share a rank (a tie, which yields no preference pair)."""
    return dense_ranks({candidate: -score for candidate, score in scores.items()})


def noisy(ranks: dict[int, int], rng: random.Random, noise: float) -> dict[int, int]:
    """With probability ``noise``, the annotator's ranks are shuffled among the candidates (a careless answer)."""
    if rng.random() >= noise:
        return ranks
    values = list(ranks.values())
    rng.shuffle(values)
    return dict(zip(ranks, values, strict=True))


@dataclass
class SimulationReport:
    annotators: list[str] = field(default_factory=list)
    answers: int = 0
    noisy_answers: int = 0


def annotate(
    store: Store,
    judge: Judge,
    *,
    annotators: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    show_progress: bool = True,
) -> SimulationReport:
    """Let ``annotators`` simulated annotators rank every item the store's queue offers them."""
    report = SimulationReport()
    total = store.progress().items
    for k in range(annotators):
        name = f"simulated-{k}"
        try:
            annotator = store.annotator(name)
        except NotFound:
            store.add_annotator(name, "annotator")
            annotator = store.annotator(name)
        report.annotators.append(name)
        rng = random.Random(f"{seed}-{name}")
        bar = tqdm(total=total, desc=f"annotating ({name})", unit="item", disable=not show_progress)
        while (item := store.next_item(annotator.id)) is not None:
            scores = {c["id"]: judge(item.messages, c["text"]) for c in item.candidates}
            ranks = rank_by_score(scores)
            answer = noisy(ranks, rng, noise)
            report.noisy_answers += answer != ranks
            store.submit_ranking(annotator.id, item.prompt_id, answer, client_id=f"{name}-{item.prompt_id}")
            report.answers += 1
            bar.update(1)
        bar.close()
    return report
