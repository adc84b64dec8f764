"""One round against three, random against uncertainty selection, at the main job's annotation budget.

    python benchmarks/compare_rounds.py --output_dir runs/rounds            # ~21 min on 2 cores
    python benchmarks/compare_rounds.py --output_dir runs/rounds --reuse    # print the tables again

Three arms, each ``rlhf pipeline --recipe recipes/tiny`` with 552 rankings in all (the main job's: one
per distinct prompt among its first 1000), on the same SFT model (trained once, copied into each run):

* ``1 round``: the main job (round 1 is the one-round pipeline: candidates from the SFT model);
* ``3 rounds, random``: 184 rankings per round; rounds 2 and 3 sample candidate sets from the current
  policy on unannotated prompts (twice as many as they may annotate) and draw 184 at random;
* ``3 rounds, uncertainty``: the same, keeping the 184 sets the previous round's reward model is least
  sure how to rank.

Each arm runs with pipeline seeds 0, 1, 2 (candidate sampling, annotators, export split) and the
reward and RL stages seeded 42 + seed; the RL iterations (50) are split across the rounds. Every
arm is judged by its own eval stage (129 held-out prompts x 3 seeds) with its own final reward
model. Prints, per arm (mean and per-seed values): gold score, gold win rate vs SFT, reward-model win
rate, their gap, the final reward model's accuracy on the final policy's answers ranked by the gold
judge, its held-out pair accuracy, KL, and the pipeline's wall time (with the shared SFT's time added)
as a ratio to the one-round arm of the same seed; then the per-round figures of the 3-round arms.

Run it on an idle machine: each pipeline runs in its own process, one after another.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench_precision import REPO, launch_pipeline, run_pipeline

from rlhf.results import EvalResult, RoundResult

BUDGET = "552"
ARMS = {
    "1 round": ["--rounds", "1"],
    "3 rounds, random": ["--rounds", "3", "--select", "random"],
    "3 rounds, uncertainty": ["--rounds", "3", "--select", "uncertainty"],
}


def figures(folder: Path, sft_seconds: float, wall: float) -> dict[str, float]:
    evaluation = EvalResult.read(folder / "eval")
    gold, reward = evaluation.win_rate["gold"].win_rate, evaluation.win_rate["reward"].win_rate
    on_policy = evaluation.reward_model_accuracy.get("ppo")
    return {
        "gold": evaluation.ppo.gold or 0.0,
        "gold_sft": evaluation.sft.gold or 0.0,
        "gold_win": gold,
        "rm_win": reward,
        "gap": reward - gold,
        "rm_acc_policy": on_policy if on_policy is not None else float("nan"),
        "rm_acc_held_out": evaluation.reward_model.accuracy if evaluation.reward_model else float("nan"),
        "kl": evaluation.kl_ppo_to_sft,
        "wall": wall + sft_seconds,
    }


def summary(values: Sequence[float], form: str) -> str:
    mean = statistics.fmean(values)
    return f"{form.format(mean)} ({', '.join(form.format(v) for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/rounds")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--reuse", action="store_true", help="keep finished runs (resume a comparison)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    recipe = REPO / "recipes" / "tiny"
    shared = out / "sft-only"
    if not (shared / "sft" / "done.json").is_file():  # the SFT stage every arm starts from
        launch_pipeline(recipe, shared, ["--stop_after", "sft"])
    sft_seconds = json.loads((shared / "sft" / "done.json").read_text())["seconds"]

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            folder = out / f"{arm.replace(', ', '-').replace(' ', '-')}-seed{seed}"
            walls = folder / "wall_seconds.json"
            if not (args.reuse and walls.is_file()):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                shutil.copytree(shared / "sft", folder / "sft")
                seeds = ["--seed", str(seed), "--reward.seed", str(42 + seed), "--ppo.seed", str(42 + seed)]
                ran = run_pipeline(recipe, folder, [*ARMS[arm], "--annotation_budget", BUDGET, *seeds])
                walls.write_text(json.dumps({"wall_seconds": ran["wall_seconds"]}))
            wall = json.loads(walls.read_text())["wall_seconds"]
            results[arm].append({**figures(folder, sft_seconds, wall), "folder": str(folder)})  # type: ignore[dict-item]

    print(
        f"\nAt {BUDGET} rankings, seeds {args.seeds} (mean (per seed)); SFT gold "
        f"{statistics.fmean(r['gold_sft'] for r in next(iter(results.values()))):.2f}\n"
    )
    print(
        "| arm | gold | gold win rate vs SFT | RM win rate | RM − gold gap | RM accuracy on the final policy's answers "
        "| RM held-out accuracy | KL | wall (× 1 round) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = results.get("1 round")
    for arm, runs in results.items():
        ratios = [r["wall"] / b["wall"] for r, b in zip(runs, base, strict=True)] if base else []
        cells = [
            summary([r["gold"] for r in runs], "{:.2f}"),
            summary([r["gold_win"] for r in runs], "{:.1%}"),
            summary([r["rm_win"] for r in runs], "{:.1%}"),
            summary([100 * r["gap"] for r in runs], "{:.1f}"),
            summary([r["rm_acc_policy"] for r in runs], "{:.1%}"),
            summary([r["rm_acc_held_out"] for r in runs], "{:.1%}"),
            summary([r["kl"] for r in runs], "{:.2f}"),
            f"{statistics.fmean(r['wall'] for r in runs):.0f} s"
            + (f" ({statistics.fmean(ratios):.2f}×)" if ratios else ""),
        ]
        print(f"| {arm} | " + " | ".join(cells) + " |")

    print("\nPer round (3-round arms, mean over seeds): the previous reward model on the policy's candidate sets")
    print("| arm | round | RM accuracy on this policy's answers | uncertainty pool → chosen | RM held-out | pairs |")
    print("|---|---|---|---|---|---|")
    for arm, runs in results.items():
        folders = [Path(str(r["folder"])) for r in runs]
        if not (folders[0] / "round-1").is_dir():
            continue
        for number in (1, 2, 3):
            rounds = [RoundResult.read(f / f"round-{number}") for f in folders]
            on_policy = [r.reward_accuracy_on_policy for r in rounds if r.reward_accuracy_on_policy is not None]
            pool = [r.mean_uncertainty_pool for r in rounds if r.mean_uncertainty_pool is not None]
            chosen = [r.mean_uncertainty_selected for r in rounds if r.mean_uncertainty_selected is not None]
            held = [r.reward_held_out_accuracy for r in rounds if r.reward_held_out_accuracy is not None]
            print(
                f"| {arm} | {number} | {statistics.fmean(on_policy):.1%} |" if on_policy else f"| {arm} | {number} | |",
                f"{statistics.fmean(pool):.3f} → {statistics.fmean(chosen):.3f} |" if pool else " |",
                f"{statistics.fmean(held):.1%} | {statistics.fmean(r.preference_pairs for r in rounds):.0f} |",
            )


if __name__ == "__main__":
    main()
