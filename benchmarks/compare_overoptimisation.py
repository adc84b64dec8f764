"""Reward over-optimisation on the main job: one reward model against an ensemble, and how KL is held.

    python benchmarks/compare_overoptimisation.py --output_dir runs/overopt                   # every variant, 3 seeds
    python benchmarks/compare_overoptimisation.py --output_dir runs/overopt --seeds 0 --variants single adaptive_kl

Runs the main job's SFT and annotation once (``rlhf pipeline --recipe recipes/tiny --stop_after
preferences``), then for each seed and variant the rest of the pipeline (``--from_stage reward`` or
``ppo``) with the reward model's and the RL stage's seed set to the seed: the same SFT model,
annotations (annotation budget), RL steps and held-out evaluation for every row. A variant that only
changes the RL stage reuses the reward model its reward variant trained. Each variant's ``reward/``,
``ppo/`` and ``eval/`` are copied to ``<output_dir>/seed-<s>/<variant>/``.

It prints, per variant (mean over seeds, and each seed): gold score of SFT and the policy, the paired
gold gain with its 95% interval, the gold win rate, the reward-model win rate, the gap between the two
(the over-optimisation the reward model did not see), the reward model's ranking accuracy on the final
policy's own answers with gold as truth (all pairs the judge separates, and the pairs that differ only in
correctness: same politeness, ending, rudeness, repetition and stray sentences, one right and one wrong),
for ensembles how much the members disagree on those pairs, the KL to the SFT model, and the reward and
RL stages' wall times. Task-specific (it reads the tiny task's judge's verdict rule by rule), so it lives here and
not in the toolkit.

Run it on an idle machine: two torch processes on 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from bench_precision import REPO, launch_pipeline

from rlhf.results import EvalResult
from rlhf.tiny import task

# variant: (reward stage overrides, RL stage overrides). Variants with the same reward overrides share it.
ENSEMBLE = ["--reward.ensemble_size", "4"]
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "single": ([], []),
    "ens_mean": (ENSEMBLE, ["--ppo.reward_aggregation", "mean"]),
    "ens_uwo": (ENSEMBLE, ["--ppo.reward_aggregation", "uwo"]),
    "ens_wco": (ENSEMBLE, ["--ppo.reward_aggregation", "wco"]),
    "adaptive_kl": ([], ["--ppo.adaptive_kl_target", "3", "--ppo.kl_horizon", "2000"]),
    "linear_lr": ([], ["--ppo.lr_scheduler_type", "linear"]),
    "rloo_single": ([], ["--ppo.advantage_estimator", "rloo"]),
    "rloo_wco": (ENSEMBLE, ["--ppo.advantage_estimator", "rloo", "--ppo.reward_aggregation", "wco"]),
}
DEFAULT = ["single", "ens_mean", "ens_uwo", "ens_wco"]
RULES = ("polite", "rude", "ended", "repeated", "stray")


def _run(shared: Path, overrides: Sequence[str]) -> float:
    wall, _ = launch_pipeline(REPO / "recipes" / "tiny", shared, overrides)
    return wall


def _policy_pairs(samples: list[dict[str, Any]], policy: str) -> tuple[list[Any], list[Any]]:
    """Pairs of a policy's answers to one prompt (any seed): those gold separates, those only correctness does."""
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        if sample["policy"] == policy:
            by_prompt.setdefault(sample["prompt_index"], []).append(sample)
    separated, correctness_only = [], []
    for group in by_prompt.values():
        for a, b in combinations(group, 2):
            if a["gold"] == b["gold"]:
                continue
            better, worse = (a, b) if a["gold"] > b["gold"] else (b, a)
            separated.append((better, worse))
            ja, jb = task.judge(better["prompt"], better["response"]), task.judge(worse["prompt"], worse["response"])
            same_style = all(getattr(ja, r) == getattr(jb, r) for r in RULES) and ja.words == jb.words
            if same_style and ja.correct and not jb.correct:
                correctness_only.append((better, worse))
    return separated, correctness_only


def _accuracy(pairs: list[Any]) -> float | None:
    return sum(b["reward"] > w["reward"] for b, w in pairs) / len(pairs) if pairs else None


def _member_disagreement(pairs: list[Any]) -> float | None:
    """Share of correctness-only pairs on which the ensemble's members do not all order the pair the same way."""
    scored = [(b["members"], w["members"]) for b, w in pairs if "members" in b]
    if not scored:
        return None
    split = [len({mb > mw for mb, mw in zip(bm, wm, strict=True)}) > 1 for bm, wm in scored]
    return sum(split) / len(split)


def measure(folder: Path, reward_seconds: float, rl_seconds: float) -> dict[str, Any]:
    evaluation = EvalResult.read(folder / "eval")
    samples = [json.loads(line) for line in (folder / "eval" / "samples.jsonl").read_text().splitlines()]
    separated, correctness_only = _policy_pairs(samples, "ppo")
    gold, rm = evaluation.win_rate["gold"], evaluation.win_rate["reward"]
    return {
        "gold_sft": evaluation.sft.gold,
        "gold": evaluation.ppo.gold,
        "gain": evaluation.gain["gold"].mean,
        "gain_low": evaluation.gain["gold"].ci_low,
        "gain_high": evaluation.gain["gold"].ci_high,
        "gold_win": gold.win_rate,
        "rm_win": rm.win_rate,
        "gap": rm.win_rate - gold.win_rate,
        "rm_acc_policy": _accuracy(separated),
        "rm_acc_correctness": _accuracy(correctness_only),
        "correctness_pairs": len(correctness_only),
        "members_split": _member_disagreement(correctness_only),
        "kl": evaluation.kl_ppo_to_sft,
        "reward_seconds": reward_seconds,
        "rl_seconds": rl_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/overopt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--reuse", action="store_true", help="keep finished variant folders")
    args = parser.parse_args()
    out = Path(args.output_dir)
    shared = out / "pipeline"
    if not (shared / "preferences" / "done.json").is_file():
        _run(shared, ["--stop_after", "preferences"])

    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        trained_reward: list[str] | None = None  # the reward overrides the shared folder's reward/ was made with
        for variant in sorted(args.variants, key=lambda v: VARIANTS[v][0]):  # one reward training per reward variant
            keep = out / f"seed-{seed}" / variant
            reward_overrides, rl_overrides = VARIANTS[variant]
            if not (args.reuse and (keep / "result.json").is_file()):
                seeds = ["--reward.seed", str(seed), "--ppo.seed", str(seed)]
                start = "ppo" if trained_reward == reward_overrides else "reward"
                _run(shared, ["--from_stage", start, *seeds, *reward_overrides, *rl_overrides])
                trained_reward = reward_overrides
                reward_seconds, rl_seconds = (
                    json.loads((shared / stage / "done.json").read_text())["seconds"] for stage in ("reward", "ppo")
                )
                shutil.rmtree(keep, ignore_errors=True)
                for name in ("reward", "ppo", "eval"):
                    shutil.copytree(shared / name, keep / name, ignore=shutil.ignore_patterns("checkpoint-*"))
                (keep / "result.json").write_text(json.dumps(measure(keep, reward_seconds, rl_seconds), indent=2))
            results[variant].append(json.loads((keep / "result.json").read_text()))

    def cell(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        values = [r[key] for r in rows if r[key] is not None]
        if not values:
            return ""
        each = "/".join(format(v, fmt) for v in values)
        return f"{format(statistics.fmean(values), fmt)} ({each})" if len(values) > 1 else each

    columns = [
        ("gold SFT", "gold_sft", ".2f"),
        ("gold policy", "gold", ".2f"),
        ("gold gain", "gain", "+.2f"),
        ("gold win", "gold_win", ".1%"),
        ("RM win", "rm_win", ".1%"),
        ("RM − gold", "gap", ".1%"),
        ("RM acc. on policy", "rm_acc_policy", ".2f"),
        ("RM acc. right-vs-wrong", "rm_acc_correctness", ".2f"),
        ("members split", "members_split", ".2f"),
        ("KL", "kl", ".2f"),
        ("reward s", "reward_seconds", ".0f"),
        ("RL s", "rl_seconds", ".0f"),
    ]
    print(f"seeds {args.seeds}: mean (each seed)")
    print("| variant | " + " | ".join(name for name, _, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for variant, rows in results.items():
        print(f"| {variant} | " + " | ".join(cell(rows, key, fmt) for _, key, fmt in columns) + " |")


if __name__ == "__main__":
    main()
