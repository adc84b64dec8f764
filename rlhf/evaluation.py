"""Evaluation of aligned policies: paired samples, win rates with confidence intervals, calibration.

The sampling runs on the shared base's :class:`~rlhf.policy.sampler.PolicySampler` (:func:`sample_policies`):
the SFT policy is the base with adapters disabled and the PPO policy is the policy adapter, so both answer the same
prompts with the same seeds and are judged by the same reward model (and the task's gold judge,
where it has one). Everything else here is a pure function over numbers, tested on its own.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from rlhf import selection
from rlhf.policy.sampler import PolicySampler, chunks
from rlhf.results import Calibration, CalibrationBin, Difference, Evaluation, PolicyScores, WinRate

POLICIES = ("sft", "ppo")
Judge = Callable[[Any, str], float]
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@torch.no_grad()
def sample_policies(
    sampler: PolicySampler,
    prompts: Sequence[Any],
    seeds: Sequence[int],
    judge: Judge | None = None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """One answer per (prompt, seed, policy), with its reward-model score, gold score, length and KL.

    ``kl`` is KL(PPO || SFT) summed over the PPO policy's own answer, from the full next-token
    distributions (:meth:`PolicySampler.kl_to_reference`); it is 0 for the SFT answers. ``judge``: the
    task's gold judge, where it has one.
    """
    samples: list[dict[str, Any]] = []
    parts = chunks(len(prompts), sampler.forward_batch_size)
    bar = tqdm(total=len(seeds) * len(parts), desc="evaluating", unit="batch", disable=not show_progress)
    for seed in seeds:
        for part in parts:
            bar.update(1)
            chunk = list(prompts[part])
            for policy in POLICIES:
                torch.manual_seed(seed * 100_003 + part.start)  # both policies see the same randomness
                answers = sampler.generate(chunk, reference=policy == "sft")
                # the reward model's score where the run has one (an ensemble's members too), else its
                # reward functions' weighted sum
                members = sampler.member_scores(chunk, answers.texts) if sampler.roles.has_reward_model else None
                rewards = (sampler.aggregate(members) if members is not None else sampler.reward(answers)).tolist()
                kls = sampler.kl_to_reference(answers).tolist() if policy == "ppo" else [0.0] * len(chunk)
                for i, text in enumerate(answers.texts):
                    sample = {
                        "policy": policy,
                        "prompt_index": part.start + i,
                        "seed": seed,
                        "prompt": chunk[i],
                        "response": text,
                        "reward": rewards[i],
                        "length": float(answers.mask[i].sum()),
                        "ended": bool(answers.ended[i]),
                        "kl": kls[i],
                    }
                    if members is not None and len(members) > 1:  # each member's (standardised) score
                        sample["members"] = members[:, i].tolist()
                    if judge is not None:
                        sample["gold"] = judge(chunk[i], text)
                    samples.append(sample)
    bar.close()
    return samples


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, stderr


def _policy_scores(samples: Sequence[dict[str, Any]]) -> PolicyScores:
    reward, reward_stderr = _mean_and_stderr([s["reward"] for s in samples])
    length, length_stderr = _mean_and_stderr([s["length"] for s in samples])
    gold, gold_stderr = _mean_and_stderr([s["gold"] for s in samples]) if "gold" in samples[0] else (None, None)
    eos_rate = statistics.fmean(float(s["ended"]) for s in samples)
    return PolicyScores(reward, reward_stderr, length, length_stderr, eos_rate, gold, gold_stderr)


def compare(samples: Sequence[dict[str, Any]]) -> Evaluation:
    """Per-policy means (with standard errors) of every score, the PPO policy's KL to SFT, and the paired win rates."""
    by_policy = {policy: [s for s in samples if s["policy"] == policy] for policy in POLICIES}
    if not all(by_policy.values()):
        raise ValueError("compare needs samples of both policies")
    return Evaluation(
        sft=_policy_scores(by_policy["sft"]),
        ppo=_policy_scores(by_policy["ppo"]),
        kl_ppo_to_sft=statistics.fmean(s["kl"] for s in by_policy["ppo"]),
        prompts=len({s["prompt_index"] for s in samples}),
        seeds=sorted({s["seed"] for s in samples}),
        win_rate=paired_win_rates(samples),
        gain=paired_gains(samples),
        reward_model_accuracy={policy: reward_model_accuracy(group) for policy, group in by_policy.items()},
    )


def reward_model_accuracy(samples: Sequence[dict[str, Any]]) -> float | None:
    """How well the reward model orders one policy's answers to each prompt (over seeds), judged by gold.

    ``None`` without a gold judge. This is the reward model's accuracy where the policy now samples:
    a reward model trained on the SFT model's answers can be right on its held-out pairs and wrong here.
    """
    if not samples or "gold" not in samples[0]:
        return None
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        by_prompt.setdefault(sample["prompt_index"], []).append(sample)
    groups = [([s["reward"] for s in group], [s["gold"] for s in group]) for group in by_prompt.values()]
    return selection.ranking_accuracy(groups)[0]


def win_rate(
    first: Sequence[float], second: Sequence[float], n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> WinRate:
    """How often ``first`` beats ``second`` in paired comparisons (ties count half), with a bootstrap CI.

    The interval resamples the pairs (percentile bootstrap), so it reflects how much the rate would
    move on another draw of prompts.
    """
    if len(first) != len(second) or not first:
        raise ValueError("win_rate needs two non-empty sequences of paired scores")
    outcomes = [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(first, second, strict=True)]
    rng = random.Random(seed)
    n = len(outcomes)
    boots = sorted(statistics.fmean(outcomes[rng.randrange(n)] for _ in range(n)) for _ in range(n_boot))
    tail = (1 - confidence) / 2
    return WinRate(
        win_rate=statistics.fmean(outcomes),
        ci_low=boots[int(tail * n_boot)],
        ci_high=boots[min(n_boot - 1, int((1 - tail) * n_boot))],
        wins=float(sum(o == 1.0 for o in outcomes)),
        ties=float(sum(o == 0.5 for o in outcomes)),
        losses=float(sum(o == 0.0 for o in outcomes)),
        pairs=float(n),
    )


def _pairs(samples: Sequence[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """The two policies' samples on the same (prompt, seed)."""
    by_key: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for s in samples:
        by_key.setdefault((s["prompt_index"], s["seed"]), {})[s["policy"]] = s
    return [v for v in by_key.values() if set(POLICIES) <= set(v)]


def paired_win_rates(samples: Sequence[dict[str, Any]]) -> dict[str, WinRate]:
    """PPO vs SFT win rates on the same (prompt, seed), by the reward model and by the gold judge."""
    pairs = _pairs(samples)
    result: dict[str, WinRate] = {}
    for judge in ("reward", "gold"):
        if pairs and judge in pairs[0]["ppo"]:
            result[judge] = win_rate([p["ppo"][judge] for p in pairs], [p["sft"][judge] for p in pairs])
    return result


def paired_difference(first: Sequence[float], second: Sequence[float], z: float = 1.96) -> Difference:
    """Mean of ``first - second`` over pairs, with a normal interval (``z`` standard errors each side)."""
    if len(first) != len(second) or not first:
        raise ValueError("paired_difference needs two non-empty sequences of paired scores")
    mean, stderr = _mean_and_stderr([a - b for a, b in zip(first, second, strict=True)])
    return Difference(mean, mean - z * stderr, mean + z * stderr, len(first))


def paired_gains(samples: Sequence[dict[str, Any]]) -> dict[str, Difference]:
    """How much the trained policy's score exceeds SFT's on the same (prompt, seed), by judge."""
    pairs = _pairs(samples)
    return {
        judge: paired_difference([p["ppo"][judge] for p in pairs], [p["sft"][judge] for p in pairs])
        for judge in ("reward", "gold")
        if pairs and judge in pairs[0]["ppo"]
    }


def reward_calibration(
    chosen: Sequence[float], rejected: Sequence[float], bins: int = 5, dataset: str | None = None
) -> Calibration:
    """Pairwise accuracy, score gap and calibration of a reward model on held-out preference pairs.

    A Bradley-Terry reward model claims P(chosen preferred) = sigmoid(r_chosen - r_rejected). The
    expected calibration error compares that claim with the observed accuracy in equal-width bins
    of the claimed probability (0 is perfectly calibrated); accuracy alone hides a model whose
    scores are squashed or inflated.
    """
    gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
    claimed = [1 / (1 + math.exp(-g)) for g in gaps]
    table = []
    ece = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, p in enumerate(claimed) if low <= p < high or (b == bins - 1 and p == 1.0)]
        if not members:
            continue
        confidence = statistics.fmean(claimed[i] for i in members)
        accuracy = statistics.fmean(float(gaps[i] > 0) for i in members)
        ece += len(members) / len(gaps) * abs(confidence - accuracy)
        table.append(CalibrationBin(low, high, len(members), confidence, accuracy))
    return Calibration(
        accuracy=statistics.fmean(float(g > 0) for g in gaps),
        mean_gap=statistics.fmean(gaps),
        pairs=len(gaps),
        ece=ece,
        bins=table,
        dataset=dataset,
    )


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of each prediction against its reference (``rouge_score``, no stemming), each
    the median of a bootstrap over the rows (``mid``), as the hub's ``rouge`` metric reports them.

    The bootstrap draws from numpy's global generator; it is seeded as `evaluate`'s metric modules seed
    it (with the generator's current key word), through which these figures were computed before, so
    they are the same, and the caller's numpy state is restored afterwards.
    """
    import numpy as np
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for prediction, reference in zip(predictions, references, strict=True):
        aggregator.add_scores(scorer.score(reference, prediction))
    state = np.random.get_state()
    _, keys, position, *_ = state
    np.random.seed(int(keys[position] if position < len(keys) else keys[0]))
    try:
        result = aggregator.aggregate()
    finally:
        np.random.set_state(state)
    return {key: float(result[key].mid.fmeasure) for key in ROUGE_KEYS}
