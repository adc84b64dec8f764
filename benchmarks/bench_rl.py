"""Benchmark of our GRPO against TRL's GRPOTrainer (the version we pin), on the tiny SFT model.

    python benchmarks/bench_rl.py --sft-model runs/compare/pipeline/sft/merged      # ~10 min on 2 idle cores
    python benchmarks/bench_rl.py --sft-model ... --repeats 3 --steps 8
    python benchmarks/bench_rl.py --random-model qwen2.5-0.5b --repeats 1 --steps 2 --rollout-batch-size 4 \
        --mini-batch-size 4 --num-generations 2 --ppo-epochs 1 --max-new-tokens 32   # memory at a real shape

With ``--random-model`` the policy starts from a random-weight model of a real architecture's shape
(bench_ppo.py's, with the tiny tokenizer grown to its vocabulary, so sampled ids decode to text; speed and
memory do not depend on the weights' values, the rewards are meaningless): the peak-memory comparison at
that shape.

Both sides train a LoRA policy (r 16, alpha 32, all linear layers, no dropout) on the same SFT model
in fp32 on CPU, on the same prompts (``builtin:tiny/prompts``, train split, chat template applied),
rewarded by the same Python function (``rlhf.tiny.task:gold_reward``, the task's gold judge in
TRL's ``reward_funcs`` form; no reward model on either side), with the same group size, rollout,
epochs and optimizer steps per rollout, temperature, response cap, learning rate, clip, gradient
clipping, gradient checkpointing (on by default, as in TRL's GRPOConfig and our real recipes; the
first version of this script left TRL's on and ours off), and GRPO's KL: ``beta`` x k3 as a loss
term against the reference (the SFT model, the LoRA disabled, on both sides), ``loss_type: dapo``
and group std scaling. The map of settings:

=====================  =============================  =====================================
                       ours (``rlhf ppo``)            TRL ``GRPOConfig``
=====================  =============================  =====================================
answers / iteration    rollout_batch_size             per_device_train_batch_size x steps_per_generation
answers per prompt     num_generations                num_generations
answers / opt. step    mini_batch_size                per_device_train_batch_size (grad. accum. 1)
passes per rollout     ppo_epochs                     num_iterations
iterations             steps                          max_steps / (steps_per_generation x num_iterations)
=====================  =============================  =====================================

Not matched, so part of what is measured: ours recomputes the sampling log-probs with a forward pass
before the update (TRL skips it when it can) and runs a no-grad reference pass per rollout (TRL does
too, as ``beta`` > 0); our timed ``train()`` includes the final checkpoint write. Each side runs in
its own process (peak RSS is ``wait4``'s ``ru_maxrss`` of that process), alternating, ``--repeats``
times; the median is reported, with the spread. Episodes/s = answers trained on / wall time of
``train()``. The training reward (the gold judge's mean score of the rollouts) is compared at equal
episodes: the mean over the last ``--last`` iterations.

Run it on an idle machine: two torch processes on 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_ppo
from bench_ppo import _set_threads, _timed, run_worker

REWARD = "rlhf.tiny.task:gold_reward"


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our GRPO through ``rlhf ppo``'s ``main(argv)``, ``train()`` timed; the per-iteration training reward."""
    _set_threads(spec)
    from rlhf.ppo.trainer import PPOTrainer
    from rlhf.stages import ppo

    record: dict[str, float] = {}
    _timed(PPOTrainer, "train", record)
    ppo.main(spec["argv"])
    steps = [json.loads(line) for line in (Path(spec["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return {**record, "rewards": [s["reward/gold_reward"] for s in steps]}


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's GRPOTrainer with a PEFT LoRA on the settings the spec shares with our run."""
    _set_threads(spec)
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.tiny.task import gold_reward

    torch.manual_seed(spec["seed"])
    s = spec["sizes"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    prompts = Dataset.from_list([{"prompt": p} for p in json.loads(Path(spec["prompts_path"]).read_text())])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    steps_per_generation = s["rollout_batch_size"] // s["mini_batch_size"]
    config = trl.GRPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=s["mini_batch_size"],
        gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation,
        num_generations=s["num_generations"],
        num_iterations=s["ppo_epochs"],
        max_steps=s["steps"] * steps_per_generation * s["ppo_epochs"],
        max_completion_length=s["max_new_tokens"],
        temperature=spec["temperature"],
        top_p=1.0,
        top_k=0,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        epsilon=0.2,
        beta=spec["kl_coef"],
        loss_type="dapo",
        scale_rewards="group",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=spec["seed"],
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"],
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[gold_reward],
        args=config,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=bench_ppo.trl_lora(spec),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # one logged entry per optimizer step; only the first step after a rollout carries its reward
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"train_seconds": seconds, "rewards": rewards, "trl": trl.__version__}


def worker_prompts(spec: dict[str, Any]) -> dict[str, Any]:
    from rlhf import data

    rows = data.load_split("builtin:tiny/prompts", "train")
    assert rows is not None
    Path(spec["prompts_path"]).write_text(json.dumps([r["prompt"] for r in rows[0]]))
    return {"prompts": len(rows[0])}


WORKERS = {"ours-grpo": worker_ours, "trl-grpo": worker_trl, "grpo-prompts": worker_prompts}


def worker(kind: str, spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """One worker of this script in a fresh process (bench_ppo's runner: its result and peak RSS)."""
    return run_worker(sys.executable, kind, spec, workdir, label, script=__file__)


def ours_argv(args: argparse.Namespace, out: Path, sizes: dict[str, int]) -> list[str]:
    """bench_ppo's command line for our stage (the tiny recipe, fp32, the shared settings), made GRPO as TRL runs it."""
    args.missing_eos_penalty = 0.0  # TRL's GRPO has no such penalty
    argv = bench_ppo._ours_ppo_argv(args, args.sft_model, Path(""), out, **sizes)
    argv[argv.index("--reward_model_path") + 1] = ""  # no reward model: the reward function alone
    grpo = {"reward_funcs": REWARD, "advantage_estimator": "grpo", "kl_penalty": "loss", "loss_type": "dapo"}
    grpo["gradient_checkpointing"] = str(args.gradient_checkpointing).lower()
    return argv + [item for key, value in {**grpo, "normalize_reward": "false"}.items() for item in (f"--{key}", value)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--sft-model", help="A merged SFT model folder (e.g. a pipeline's sft/merged).")
    model.add_argument("--random-model", choices=sorted(bench_ppo.ARCHITECTURES), help="A random-weight model.")
    parser.add_argument("--out", default="runs/bench/rl.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="Iterations (rollouts) per run.")
    parser.add_argument("--last", type=int, default=3, help="Iterations whose training reward is compared.")
    parser.add_argument("--rollout-batch-size", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On both sides (default on: TRL's GRPOConfig default and our real recipes' setting).",
    )
    args = parser.parse_args()
    sizes = {
        "steps": args.steps,
        "rollout_batch_size": args.rollout_batch_size,
        "mini_batch_size": args.mini_batch_size,
        "num_generations": args.num_generations,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    if args.random_model:
        folder = workdir / f"random-{args.random_model}"
        spec = {
            "architecture": bench_ppo.ARCHITECTURES[args.random_model],
            "path": str(folder),
            "threads": args.threads,
        }
        built = worker("build-model", spec, workdir, "build-model")
        print(f"  a random-weight {args.random_model}: {built['parameters'] / 1e6:.0f}M parameters", flush=True)
        args.sft_model = str(folder)
    args.sft_model = str(Path(args.sft_model).resolve())
    prompts_path = workdir / "prompts.json"
    worker("grpo-prompts", {"prompts_path": str(prompts_path), "threads": 1}, workdir, "prompts")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
            out = workdir / f"{side}-{repeat}"
            print(f"  {side} run {repeat + 1}/{args.repeats} ...", flush=True)
            if side == "ours":
                spec = {"argv": ours_argv(args, out, sizes), "output_dir": str(out), "threads": args.threads}
                result = worker("ours-grpo", spec, workdir, f"ours-{repeat}")
            else:
                spec = {
                    "model": args.sft_model,
                    "prompts_path": str(prompts_path),
                    "output_dir": str(out),
                    "sizes": sizes,
                    **{k: getattr(args, k) for k in ("threads", "seed", "lora_r", "lora_alpha", "learning_rate")},
                    **{k: getattr(args, k) for k in ("kl_coef", "temperature", "gradient_checkpointing")},
                }
                result = worker("trl-grpo", spec, workdir, f"trl-{repeat}")
            result["episodes_per_second"] = args.steps * args.rollout_batch_size / result["train_seconds"]
            result["final_reward"] = statistics.mean(result["rewards"][-args.last :])
            runs[side].append(result)
            print(
                f"    {result['episodes_per_second']:.2f} episodes/s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                f"reward over the last {args.last} iterations {result['final_reward']:.3f}",
                flush=True,
            )

    def spread(side: str, key: str) -> str:
        values = [r[key] for r in runs[side]]
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    median = {
        side: {k: statistics.median(r[k] for r in runs[side]) for k in ("episodes_per_second", "peak_rss_mib")}
        for side in runs
    }
    model = args.random_model or args.sft_model
    print(f"\nGRPO on {model}, {json.dumps(sizes)}, {args.repeats} run(s) per side (median, min-max):\n")
    print("| | ours | TRL " + runs["trl"][0].get("trl", "") + " | ours / TRL |")
    print("|---|---|---|---|")
    for key, label in (("episodes_per_second", "episodes/s"), ("peak_rss_mib", "peak RSS MiB")):
        ratio = median["ours"][key] / median["trl"][key]
        print(f"| {label} | {spread('ours', key)} | {spread('trl', key)} | {ratio:.2f}x |")
    print(
        f"| gold reward, last {args.last} of {args.steps} iterations | {spread('ours', 'final_reward')} "
        f"| {spread('trl', 'final_reward')} | |"
    )
    # the two sides of a repeat ran back to back: their ratio is less exposed to a machine whose speed drifts
    pairs = [
        ours["episodes_per_second"] / trl["episodes_per_second"]
        for ours, trl in zip(runs["ours"], runs["trl"], strict=True)
    ]
    print(
        f"| episodes/s ours / TRL within each repeat | {', '.join(f'{r:.2f}x' for r in pairs)} "
        f"| median {statistics.median(pairs):.2f}x | |"
    )
    first = {side: statistics.median(r["rewards"][0] for r in runs[side]) for side in runs}
    print(f"| gold reward, first iteration | {first['ours']:.3f} | {first['trl']:.3f} | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": sizes, "runs": runs, "median": median, "ratio_per_repeat": pairs}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_worker":
        bench_ppo.WORKERS.update(WORKERS)
        bench_ppo.worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
