"""PPO, GRPO, RLOO and REINFORCE++ on the main job: same SFT model, reward model, prompts and answer budget.

    python benchmarks/compare_rl.py --output_dir runs/compare          # ~20 min on 2 cores
    python benchmarks/compare_rl.py --output_dir runs/compare --reuse \
        --methods gae grpo grpo_kl_reward grpo_unscaled dr_grpo rloo reinforce_pp   # docs/benchmarks.md's seven
    python benchmarks/compare_rl.py --output_dir runs/compare --reuse --methods gae dpo kto   # the offline route

Runs ``rlhf pipeline --recipe recipes/tiny`` once (PPO with GAE, as shipped), then, for each
critic-free method, the same pipeline again ``--from_stage ppo`` with ``--ppo.advantage_estimator
<method>`` (and that method's usual KL placement) on the same SFT model, annotations and reward model:
the same rollout batch (64 answers per iteration: 16 prompts x 4 answers for the group methods),
iterations, learning rate and held-out evaluation (the eval stage: every held-out prompt, 3 seeds).
``dpo`` and ``kto`` take the pipeline's offline route (``--algorithm dpo|kto``) on the same annotations,
their recipes as shipped, judged by the same eval stage (the PPO recipe's sampling, the same reward model).
Each method's ppo/, eval/ and export/ folders are moved to ``<output_dir>/<method>/``. Each pipeline
runs in its own process (``bench_precision.run_pipeline``), one after another. Prints a markdown table
(gold score, paired gold gain with its 95% interval, gold and reward-model win rates, KL, time of the
RL stage and its episodes/s; memory is bench_rl.py's and bench_ppo.py's) and writes ``comparison.html`` with
``rlhf report``'s comparison page.

Run it on an idle machine: two torch processes on 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench_precision import REPO, run_pipeline

from rlhf import report
from rlhf.results import EvalResult, PPOResult
from rlhf.stages import evaluate

# Each method as its paper or reference implementation places the KL: GRPO as a k3 loss term, the
# others as a per-token penalty in the reward (RLOO as in TRL's RLOO, REINFORCE++ as in OpenRLHF);
# and GRPO variants: the KL in the reward; no std scaling; no std scaling with Dr. GRPO's
# constant-normaliser loss.
METHODS = {
    "gae": ("PPO (GAE critic)", []),
    "grpo": ("GRPO (KL k3 in the loss)", ["--ppo.advantage_estimator", "grpo", "--ppo.kl_penalty", "loss"]),
    "grpo_kl_reward": ("GRPO (KL k1 in the reward)", ["--ppo.advantage_estimator", "grpo"]),
    "grpo_unscaled": (
        "GRPO without std scaling (KL k3 in the loss)",
        ["--ppo.advantage_estimator", "grpo", "--ppo.kl_penalty", "loss", "--ppo.scale_rewards", "false"],
    ),
    "dr_grpo": (
        "Dr. GRPO (no std scaling, dr_grpo loss, KL k3 in the loss)",
        [
            *("--ppo.advantage_estimator", "grpo", "--ppo.kl_penalty", "loss"),
            *("--ppo.scale_rewards", "false", "--ppo.loss_type", "dr_grpo"),
        ],
    ),
    "rloo": ("RLOO", ["--ppo.advantage_estimator", "rloo"]),
    "reinforce_pp": ("REINFORCE++", ["--ppo.advantage_estimator", "reinforce_pp"]),
    # the pipeline's offline route on the same annotations (judged with the same reward model)
    "dpo": ("DPO (offline: the rankings as pairs)", ["--algorithm", "dpo"]),
    "kto": ("KTO (offline: the rankings as thumbs)", ["--algorithm", "kto"]),
}
OFFLINE = evaluate.OFFLINE_STAGES
DEFAULT = ["gae", "grpo", "rloo", "reinforce_pp"]
MOVED = ("ppo", "dpo", "kto", "eval", "export", "report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/compare")
    parser.add_argument("--methods", nargs="+", default=DEFAULT, choices=list(METHODS))
    parser.add_argument("--reuse", action="store_true", help="keep finished method folders (resume a comparison)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    shared = out / "pipeline"  # SFT, annotation and reward model, shared by every method
    recipe = REPO / "recipes" / "tiny"
    for method in args.methods:
        keep = out / method
        if args.reuse and (keep / "eval" / "metrics.json").is_file():
            continue
        stage = method if method in OFFLINE else "ppo"
        if method == "kto" and not (shared / "preferences" / "kto").is_dir():
            stage = "preferences"  # a folder from before the rankings were also exported as thumbs
        again = ["--from_stage", stage] if (shared / "reward" / "done.json").is_file() else []
        run_pipeline(recipe, shared, [*again, *METHODS[method][1]])
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for name in MOVED:
            if (shared / name).exists():
                shutil.move(shared / name, keep / name)

    print(
        "| method | gold SFT → policy | gold gain [95% CI] | gold win rate [95% CI] | RM win rate [95% CI] "
        "| KL | RL stage s | episodes/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    folders = [out / m for m in args.methods]
    for method, folder in zip(args.methods, folders, strict=True):
        stage = method if method in OFFLINE else "ppo"
        evaluation = EvalResult.read(folder / "eval")
        speed = PPOResult.read(folder / "ppo").final.get("throughput/episodes_per_second") if stage == "ppo" else None
        gain, gold, rm = evaluation.gain["gold"], evaluation.win_rate["gold"], evaluation.win_rate["reward"]
        seconds = json.loads((folder / stage / "done.json").read_text())["seconds"]
        print(
            f"| {METHODS[method][0]} | {evaluation.sft.gold:.2f} → {evaluation.ppo.gold:.2f} "
            f"| {gain.mean:+.2f} [{gain.ci_low:+.2f}, {gain.ci_high:+.2f}] "
            f"| {gold.win_rate:.1%} [{gold.ci_low:.1%}, {gold.ci_high:.1%}] "
            f"| {rm.win_rate:.1%} [{rm.ci_low:.1%}, {rm.ci_high:.1%}] | {evaluation.kl_ppo_to_sft:.2f} "
            f"| {seconds:.0f} "
            f"| {f'{speed:.2f}' if speed is not None else ''} |"
        )
    online = [folder for method, folder in zip(args.methods, folders, strict=True) if method not in OFFLINE]
    print(report.build_comparison(online, out / "comparison.html"))


if __name__ == "__main__":
    main()
