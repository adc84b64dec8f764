"""Does the main job's reward model see correctness, or only style? And what makes it see correctness?

    python benchmarks/reward_correctness.py --output_dir runs/rmstudy            # every variant
    python benchmarks/reward_correctness.py --output_dir runs/rmstudy --variants recipe epochs_4

Runs the main job's SFT and annotation once (``rlhf pipeline --recipe recipes/tiny --stop_after
preferences``), then retrains only the reward model per variant (``--from_stage reward --stop_after
reward`` with the variant's options; a variant that changes the annotation reruns from ``generate``
with the same annotation budget in answers read) and scores, with each variant's reward model (every
member of an ensemble), pairs of the built-in task's held-out facts that a person ranks:

* **right vs wrong**: a polite, well-formed answer against the same answer to a misread question
  ("Sure! 3 plus 4 is 7." vs "Sure! 3 plus 5 is 8."): only correctness separates them;
* **style**: every other pair the judge separates (politeness, rudeness, cut off, repetition, topic).

It prints each variant's accuracy on both, the held-out accuracy on its own annotations, and for an
ensemble each member's right-vs-wrong accuracy and the share of right-vs-wrong pairs its members do
not all order the same way (whether an ensemble's disagreement could flag the blind spot at all).

Run it on an idle machine: two torch processes on 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from bench_precision import REPO, launch_pipeline

from rlhf import data, ensemble, runs
from rlhf.arguments import ModelArguments
from rlhf.config import from_options
from rlhf.policy import loading
from rlhf.policy.sampler import PolicySampler
from rlhf.policy.sampling import SamplingSettings
from rlhf.ppo.config import PPOConfig
from rlhf.results import RewardResult
from rlhf.tiny import corpus, task

VARIANTS: dict[str, tuple[str, list[str]]] = {  # name: (first stage to rerun, overrides)
    "recipe": ("reward", []),
    "epochs_4": ("reward", ["--reward.num_train_epochs", "4"]),
    "rank_64": ("reward", ["--reward.lora_r", "64", "--reward.lora_alpha", "128"]),
    "lr_3e-4": ("reward", ["--reward.learning_rate", "3e-4"]),
    # the same answers read (1000 prompts x 4), spent as 500 prompts x 8: more pairs within a prompt
    "candidates_8": ("generate", ["--num_candidates", "8", "--annotation_prompts", "500"]),
    "ensemble_4": ("reward", ["--reward.ensemble_size", "4"]),
}
PAIRS = 3000  # built-in held-out pairs scored (about a third differ only in correctness)


def held_out_pairs() -> dict[str, list[dict[str, Any]]]:
    """Built-in held-out pairs, split into those only correctness separates and the rest."""
    kinds: dict[str, list[dict[str, Any]]] = {"right_vs_wrong": [], "style": []}
    for row in corpus.preference_rows(PAIRS, split="test"):
        prompt, chosen, rejected = row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"]
        a, b = task.judge(prompt, chosen), task.judge(prompt, rejected)
        same_style = all(getattr(a, r) == getattr(b, r) for r in ("polite", "rude", "ended", "repeated", "stray"))
        kinds["right_vs_wrong" if same_style and a.correct and not b.correct else "style"].append(row)
    return kinds


def score(reward_dir: Path, pairs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each member's accuracy (and the ensemble mean's) on each kind of pair; how often members split."""
    (model_args,) = from_options([ModelArguments], runs.read_config(reward_dir))
    config = PPOConfig(output_dir=str(reward_dir), reward_model_path=str(reward_dir), eval_max_prompts=0)
    roles, tokenizer = loading.load_roles(model_args, config, config, seed=config.seed)
    sampler = PolicySampler(roles, tokenizer, SamplingSettings(1))
    out: dict[str, Any] = {}
    for kind, rows in pairs.items():
        ids = [data.preference_ids(row, tokenizer) for row in rows]
        chosen = sampler.score_token_ids([i["chosen_ids"] for i in ids])
        rejected = sampler.score_token_ids([i["rejected_ids"] for i in ids])
        right = chosen > rejected  # K x pairs
        out[kind] = {
            "pairs": len(rows),
            "ensemble": float((chosen.mean(0) > rejected.mean(0)).float().mean()),
            "members": [float(r.float().mean()) for r in right],
            "split": float((right.any(0) & ~right.all(0)).float().mean()) if len(right) > 1 else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/rmstudy")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--shared", help="a pipeline folder whose SFT and annotations to reuse (copied)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    shared = out / "pipeline"
    if not (shared / "preferences" / "done.json").is_file():
        if args.shared:
            shutil.rmtree(shared, ignore_errors=True)
            keep = ("sft", "generate", "annotate", "preferences", "feedback.db", "pipeline_config.yaml")
            shared.mkdir(parents=True)
            for name in keep:
                source = Path(args.shared) / name
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, shared / name)
        else:
            launch_pipeline(REPO / "recipes" / "tiny", shared, ["--stop_after", "preferences"])
    pairs = held_out_pairs()
    print(f"built-in held-out pairs: {', '.join(f'{len(rows)} {kind}' for kind, rows in pairs.items())}")
    print("| variant | held-out acc. (own annotations) | right vs wrong | style | members, right vs wrong | split |")
    print("|---|---|---|---|---|---|")
    recipe = REPO / "recipes" / "tiny"
    for name in args.variants:
        keep = out / name
        if not (keep / "scores.json").is_file():
            start, overrides = VARIANTS[name]
            folder = shared if start == "reward" else out / f"pipeline-{name}"
            if start != "reward":  # another annotation: a copy of the shared SFT model, annotated again
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                shutil.copytree(shared / "sft", folder / "sft")
                shutil.copy2(shared / "pipeline_config.yaml", folder / "pipeline_config.yaml")
            launch_pipeline(recipe, folder, ["--from_stage", start, "--stop_after", "reward", *overrides])
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(folder / "reward", keep / "reward", ignore=shutil.ignore_patterns("checkpoint-*"))
            result = RewardResult.read(keep / "reward")
            scores = score(keep / "reward", pairs)
            scores["held_out"] = result.eval.accuracy if result.eval is not None else None
            scores["members"] = len(ensemble.members(keep / "reward"))
            (keep / "scores.json").write_text(json.dumps(scores, indent=2))
        scores = json.loads((keep / "scores.json").read_text())
        rvw, style = scores["right_vs_wrong"], scores["style"]
        members = "/".join(f"{m:.2f}" for m in rvw["members"]) if len(rvw["members"]) > 1 else ""
        split = f"{rvw['split']:.2f}" if rvw["split"] is not None else ""
        print(
            f"| {name} | {scores['held_out']:.3f} | {rvw['ensemble']:.3f} | {style['ensemble']:.3f} "
            f"| {members} | {split} |"
        )


if __name__ == "__main__":
    main()
