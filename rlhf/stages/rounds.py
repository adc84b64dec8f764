"""The rounds of ``rlhf pipeline --rounds N``: their plan, the later rounds' candidate sets, each round's summary.

Round 1 is the one-round pipeline's (candidates from the SFT model, the first prompts of the split).
Each later round samples candidate sets from the current policy on prompts not annotated before
(``selection_pool`` times as many as the round may annotate), scores them with the current reward
model, lets a selector (:mod:`rlhf.selection`) choose the round's share of ``annotation_budget``, and
puts them in the feedback store as batch N with the selector and its score (:func:`generate_selected`).
When a round's RL has finished, :func:`finish` writes ``round-N/metrics.json``
(:class:`rlhf.results.RoundResult`) from what its steps recorded (:mod:`rlhf.stages.steps`).

Every function takes what it needs as arguments: the pipeline (:mod:`rlhf.stages.pipeline`) owns the
run folder and the order of the steps, this module what a round does.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback import export as feedback_export
from feedback.records import prompt_messages
from feedback.store import Store
from rlhf import candidates, selection
from rlhf.policy.sampler import PolicySampler
from rlhf.results import PPOResult, RewardResult, RoundResult
from rlhf.stages.steps import AnnotatedBatch, AnnotateStep, Batch, GenerateStep, PreferencesStep, SelectedBatch
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

SELECTION_FILE = "selection.jsonl"  # a later round's candidate pool, scored, with the selector's choice
KTO_DIR = "kto"  # under preferences/: the rankings as KTO thumbs


def folder(rnd: int) -> str:
    """A round's folder in the run folder."""
    return f"round-{rnd}"


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal integers, the larger ones first (annotation budget, RL iterations)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def key(prompt: Any) -> str:
    """A prompt's identity as the store sees it (text and chat messages alike)."""
    return json.dumps(prompt_messages(prompt), sort_keys=True)


@dataclass(frozen=True)
class RoundPlan:
    """Items to annotate and RL iterations per round; ``None`` for the one-round pipeline's own sizes."""

    items: list[int] | None
    steps: list[int] | None


def plan(
    *,
    rounds: int,
    algorithm: str,
    select: str,
    selection_pool: float,
    overlap: int,
    annotation_budget: int | None,
    ensemble_size: int,
    rl_steps: int,
    default_items: Callable[[], int],
) -> RoundPlan:
    """Checked before anything runs: a plan that cannot work fails now, naming the option.

    ``default_items``: how many items an unset ``annotation_budget`` means (called only then: it loads
    the prompts), the one-round pipeline's distinct prompts.
    """
    if rounds < 1:
        raise ConfigError(f"rounds: {rounds}; the pipeline runs at least one round")
    if rounds > 1 and algorithm != "ppo":
        raise ConfigError(
            f"rounds: {rounds} with --algorithm {algorithm}: later rounds sample the current "
            "policy and continue it, which the online route does; use --algorithm ppo (any "
            "--ppo.advantage_estimator)"
        )
    if select == "disagreement" and ensemble_size < 2:
        raise ConfigError(
            "select: disagreement compares a reward ensemble's members, and the reward stage trains one model; "
            "add --reward.ensemble_size 4 (or select uncertainty)"
        )
    if selection_pool < 1:
        raise ConfigError(f"selection_pool: {selection_pool}; the selector needs at least one set per pick")
    if overlap < 1:
        raise ConfigError(f"overlap: {overlap}; at least one annotator per item")
    budget = annotation_budget
    if budget is None and rounds == 1:
        return RoundPlan(None, None)
    if budget is None:  # the one-round pipeline's budget: one ranking per distinct prompt it would annotate
        budget = default_items() * overlap
    if budget % overlap:
        raise ConfigError(f"annotation_budget: {budget} is not a multiple of overlap {overlap}")
    items = budget // overlap
    if items < rounds:
        raise ConfigError(
            f"annotation_budget: {budget} rankings is smaller than one batch per round "
            f"(rounds {rounds} x overlap {overlap} = {rounds * overlap})"
        )
    if rl_steps < rounds:
        raise ConfigError(f"--ppo.steps: {rl_steps} RL iterations cannot be split over {rounds} rounds")
    return RoundPlan(split_evenly(items, rounds), split_evenly(rl_steps, rounds))


def first_batch(store: Store, prompts: Sequence[Any]) -> Batch:
    """Round 1's candidate sets (already stored) as batch 1, in the order the dataset gives them."""
    ids = store.add_prompts(list(prompts))  # already stored: their ids
    store.assign_batch(ids, 1, selection.FIRST_ROUND)
    return Batch(items=len(set(ids)), pool=len(set(ids)), selected_by=selection.FIRST_ROUND)


def score_field(select: str) -> str:
    """Which score of a candidate set the selector ranks by (and the store records with the batch)."""
    return "disagreement" if select == "disagreement" else "uncertainty"


@dataclass(frozen=True)
class Selection:
    """How a later round chooses its candidate sets (the pipeline's options of the same names)."""

    select: str  # the selector (rlhf.selection.SELECTORS)
    selection_pool: float  # candidate sets sampled per set annotated
    num_candidates: int  # answers per set
    seed: int  # the run's seed


def candidate_pool(
    store: Store,
    prompts: Sequence[Any],
    rnd: int,
    wanted: int,
    choice: Selection,
    sampler: Callable[[], PolicySampler],
    judge: Callable[[Any, str], float] | None,
) -> list[dict[str, Any]]:
    """Round ``rnd``'s pool: candidate sets of the previous round's policy (``sampler``) on the distinct
    ``prompts`` not in the store yet, scored by its reward model (and the gold ``judge``, if any), each
    marked ``chosen`` or not by the selector (``wanted`` of them): the rows of ``selection.jsonl``."""
    stored = {key(messages) for _, messages in store.prompts()}
    fresh = [p for p in prompts if key(p) not in stored]
    pool = fresh[: math.ceil(choice.selection_pool * wanted)]
    if len(pool) < wanted:
        logger.warning("round %d: only %d unannotated prompts left for %d items", rnd, len(pool), wanted)
    texts, scores, members = candidates.propose(sampler(), pool, choice.num_candidates, seed=choice.seed * 1000 + rnd)
    rows = []
    for prompt, answers, rewards, each in zip(pool, texts, scores, members, strict=True):
        kept: dict[str, int] = {}  # each distinct answer, at its first place (its scores are the same anywhere)
        for i, text in enumerate(answers):
            if text:
                kept.setdefault(text, i)
        if len(kept) < 2:  # nothing to rank: a set of one answer yields no preference
            continue
        row = {
            "prompt": prompt,
            "candidates": list(kept),
            "rewards": [rewards[i] for i in kept.values()],
            "gold": [judge(prompt, text) for text in kept] if judge is not None else None,
            "uncertainty": selection.uncertainty([rewards[i] for i in kept.values()]),
        }
        if len(each) > 1:
            row["disagreement"] = selection.disagreement([[m[i] for i in kept.values()] for m in each])
        rows.append(row)
    by = score_field(choice.select)
    picked = set(selection.select([r[by] for r in rows], min(wanted, len(rows)), choice.select, choice.seed + rnd))
    return [{**row, "chosen": i in picked} for i, row in enumerate(rows)]


def generate_selected(
    out: Path,
    store: Store,
    rnd: int,
    choice: Selection,
    pool: Callable[[], list[dict[str, Any]]],
    *,
    model: str,
    adapter: str,
    generation: dict[str, Any],
) -> tuple[candidates.GenerateReport, SelectedBatch]:
    """Store the candidate sets the selector chose from ``pool()`` as batch ``rnd`` (``model`` with
    ``adapter`` sampled them, under ``generation``).

    The scored pool is written to ``selection.jsonl`` before anything is stored, so a run killed
    while storing the batch stores the same batch when it resumes (without sampling it again).
    """
    pool_file = out / SELECTION_FILE
    if not pool_file.is_file():
        partial = pool_file.with_suffix(".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in pool()))
        partial.replace(pool_file)
    rows = [json.loads(line) for line in pool_file.read_text().splitlines()]
    chosen = [row for row in rows if row["chosen"]]
    ids = store.add_prompts([row["prompt"] for row in chosen])
    report = candidates.GenerateReport(prompts=len(chosen))
    for prompt_id, row in zip(ids, chosen, strict=True):
        candidates.store_set(
            store, report, prompt_id, row["candidates"], model=model, adapter=adapter, generation=generation
        )
    by = score_field(choice.select)
    store.assign_batch(ids, rnd, choice.select, [row[by] for row in chosen])
    accuracy, pairs = selection.ranking_accuracy([(r["rewards"], r["gold"]) for r in rows if r["gold"]])
    return report, SelectedBatch(
        items=len(chosen),
        pool=len(rows),
        selected_by=choice.select,
        mean_uncertainty_pool=_mean([r["uncertainty"] for r in rows]),
        mean_uncertainty_selected=_mean([r["uncertainty"] for r in chosen]),
        reward_accuracy_on_policy=accuracy,
        reward_accuracy_pairs=pairs,
    )


def annotated_batch(store: Store, rnd: int) -> AnnotatedBatch:
    """The answers round ``rnd``'s batch has collected."""
    batch = next(b for b in store.progress().batches if b.batch == rnd)
    return AnnotatedBatch(round=rnd, items=batch.items, answers=batch.answers)


def preferences(out: Path, store: Store, *, aggregation: str, test_fraction: float, seed: int) -> dict[str, Any]:
    """Every ranking so far as preference pairs (and as KTO thumbs in ``kto/``): what this round's reward
    model learns (and ``rlhf kto`` trains on). The figures :class:`PreferencesStep` reads back."""
    options: dict[str, Any] = {"aggregation": aggregation, "test_fraction": test_fraction, "seed": seed}
    options["overwrite"] = True  # a stage run again after a crash replaces its earlier export (never merges)
    report = feedback_export.export(store, "pairs", out, **options)
    if not report.rows.get("train"):
        raise RuntimeError(f"no preference pairs to train on: {report}")
    thumbs = feedback_export.export(store, "kto", out / KTO_DIR, **options)
    return {"rows": report.rows, "answers": report.answers, "kto_rows": thumbs.rows}


def finish(
    out: Path,
    rnd: int,
    *,
    generated: GenerateStep,
    annotated: AnnotateStep,
    pairs: PreferencesStep,
    reward_model: RewardResult,
    policy: PPOResult,
    seconds: float,
) -> RoundResult:
    """The round's figures from its steps' records (``seconds``: theirs summed), written to ``out``
    (``round-N/metrics.json``)."""
    if annotated.batch is None:
        raise ConfigError(f"{out}: the annotate step recorded no batch; was it run with --rounds?")
    result = RoundResult(
        round=rnd,
        items=generated.items,
        answers=annotated.batch.answers,
        selected_by=generated.selected_by,
        pool=generated.pool,
        mean_uncertainty_pool=generated.mean_uncertainty_pool,
        mean_uncertainty_selected=generated.mean_uncertainty_selected,
        reward_accuracy_on_policy=generated.reward_accuracy_on_policy,
        reward_accuracy_pairs=generated.reward_accuracy_pairs,
        reward_held_out_accuracy=reward_model.eval.accuracy if reward_model.eval is not None else None,
        preference_pairs=pairs.rows.get("train", 0),
        policy_steps=policy.steps,
        policy=policy.final,
        seconds=round(seconds, 1),
    )
    result.write(out)
    return result


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
