"""GPU check of the real recipes: wall time, peak GPU memory and tokens/s of sft, reward and ppo, in one command.

    python scripts/gpu_check.py --out gpu_check.json                  # one GPU; budget: 8 minutes (see below)
    python scripts/gpu_check.py --skip-7b                             # the 0.5B shape only
    python scripts/gpu_check.py --device cpu --shape tiny --skip-7b   # the same flow on CPU (~1 min, smoke test)

Why. The real recipes (``recipes/qwen2.5-0.5b-instruct`` and ``recipes/qwen2.5-7b-instruct``: 4-bit NF4 with
double quantization, LoRA on every linear layer, paged 8-bit AdamW, gradient checkpointing) are only run on the
tiny model on CPU by the test suite. Whether they fit a 16 GB card, how fast they go, and whether PPO on one shared
4-bit base stays near SFT's memory (the README's claim, measured so far on CPU in fp32 only) can only be measured
on a GPU. Speed and memory do not depend on the weights' values, so the models are random-weight models of the
real architectures' shapes (Qwen2.5-0.5B: 494M parameters; Qwen2.5-7B: 7.6B), built offline from their configs
(``ARCHITECTURES`` in ``scripts/bench_ppo.py``) with the tiny model's tokenizer: no hub access is needed.

What runs, per model, each stage in its own process through ``rlhf.cli.main`` (so each peak is that stage's):
``rlhf sft`` with the recipe for ``--steps`` optimizer steps (then merged, as the recipe says), ``rlhf reward`` on
the merged SFT model for ``--steps`` steps, ``rlhf ppo`` on that base and reward model for ``--steps`` iterations,
then (not for the 7B shape) ``rlhf ppo`` with the GRPO recipe (groups of 8 answers, packed) on the same base.
Only paths, step counts, ``max_length`` (the data is packed to it) and the PPO rollout/minibatch sizes are passed
on the command line; everything else (quantization, optimizer, batch sizes, ``max_new_tokens``, precision: bf16 on
Ampere or newer, fp16 on a T4) comes from the recipes as they are, so recipe changes flow through.

Data. The built-in tiny sets (``rlhf data tiny``) packed into multi-turn conversations of about ``max_length``
tokens (the recipe's 1024 on GPU), so memory and speed are those of full-length rows, not of 30-token ones: SFT
``messages``, preference pairs ``prompt``/``chosen``/``rejected`` (earlier turns as the prompt's context), PPO
prompts of about half that length. A random model almost never samples EOS, so every PPO response is
``max_new_tokens`` long (the recipe's 128): the worst case for memory.

Measured per stage: wall time of its process (start-up, loading and 4-bit quantization, training, saving, merge),
peak GPU memory (``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``; bitsandbytes' paged optimizer
state lives in CUDA managed memory, outside PyTorch's allocator, and is not in them: 2 bytes per trainable
parameter, under 200 MiB here), the process's peak RSS, and tokens/s: SFT and reward, the trainer's
``num_tokens`` (non-padding tokens trained on) over ``train_runtime``; PPO, the median over iterations of
``throughput/tokens_per_second`` (response tokens per second of an iteration: generation, scoring and update).
Then PPO's peak over SFT's, per model (GPU memory allocated on GPU, RSS on CPU). Printed as a table, and written
as JSON to ``--out`` after every stage, so a run cut short still brings back what it measured.

Qwen2.5-7B (memory first: does the 7B recipe fit a 16 GB card?). Its random bf16 weights (15 GB) are built
directly on the GPU and written once (in 2 GB shards); then SFT without the merge (a merged 15 GB copy, and its
check, would take longer than the rest of the check), reward and PPO all on that base, with the 7B recipes, half of
``--steps`` (rounded up) and a PPO rollout of 8. Building the weights on the GPU needs one of at least 20 GiB; on
smaller ones (a T4) this part is skipped with a note: the peak allocated memory measured on a larger GPU is what a
16 GB card would need, and on a T4 the 15 GB written and read three times would break the time budget.

Time budget: 8 minutes on one GPU. These are estimates, not measurements (no GPU was available when this was
written): the 0.5B shape about 2-3 minutes on an H100/H200 and 3-5 on a T4 (which skips 7B); the 7B shape 3-4
more on an H100/H200, where the three loads of 15 GB into 4-bit dominate. ``--steps`` scales the training (at
least 2: the recipes warm up from learning rate 0, and one step leaves an adapter the SFT merge refuses);
``--skip-7b`` leaves the 7B shape out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# scripts/ is sys.path[0] when this file runs as a script; bench_ppo imports only the standard library at the top.
from bench_ppo import ARCHITECTURES, _table, build_random_model

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
MIN_GPU_GIB_FOR_7B = 20  # the 7B random weights are built in bf16 on the GPU (15 GB)
TRAIN_ROWS, TEST_ROWS = 64, 8


@dataclass(frozen=True)
class Plan:
    """One model of the check: its shape, the recipes it runs with, and what differs from them."""

    architecture: dict[str, Any]
    recipe: str
    ppo_sizes: dict[str, int]  # PPO options passed on the command line (the rest come from the recipe)
    merge: bool  # SFT writes a merged model that reward and PPO start from; False: they use the base itself
    step_fraction: float = 1.0  # of --steps


QWEN_05B = ARCHITECTURES["qwen2.5-0.5b"]
PLANS: dict[str, Plan] = {
    # 2 layers, hidden 64: the Qwen2 architecture (GQA, q/k/v biases, tied embeddings) small enough for CPU
    "tiny": Plan(
        {
            **QWEN_05B,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1024,
            "max_position_embeddings": 2048,
        },
        "qwen2.5-0.5b-instruct",
        {
            "rollout_batch_size": 8,
            "mini_batch_size": 4,
            "micro_batch_size": 2,
            "forward_batch_size": 8,
            "max_new_tokens": 8,
        },
        merge=True,
    ),
    "qwen2.5-0.5b": Plan(QWEN_05B, "qwen2.5-0.5b-instruct", {"rollout_batch_size": 16, "mini_batch_size": 16}, True),
    # Qwen/Qwen2.5-7B-Instruct's config.json: 7.6B parameters, untied 152064-token embeddings
    "qwen2.5-7b": Plan(
        {
            **QWEN_05B,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
        },
        "qwen2.5-7b-instruct",
        {"rollout_batch_size": 8, "mini_batch_size": 4},
        merge=False,
        step_fraction=0.5,
    ),
}
BIG = "qwen2.5-7b"


# ----------------------------------------------------------------------------------------------
# Workers: each runs in its own process (python gpu_check.py _build|_stage RESULT ...)


def _peaks() -> dict[str, Any]:
    """This process's peak RSS, and its peak GPU memory where there is a GPU."""
    import torch

    peaks: dict[str, Any] = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # kB
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        peaks.update(
            gpu=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_total_mib=props.total_memory / MIB,
            peak_allocated_mib=torch.cuda.max_memory_allocated() / MIB,
            peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB,
        )
    return peaks


def build_worker(shape: str, path: str) -> dict[str, Any]:
    """A random-weight model of ``shape``, saved with the tiny tokenizer: bf16 on the GPU if any, else fp32."""
    import torch

    return build_random_model(PLANS[shape].architecture, path, "cuda" if torch.cuda.is_available() else "cpu")


def worker_main(kind: str, result_path: str, args: list[str]) -> None:
    """Build a model (``_build SHAPE PATH``) or run ``rlhf <stage> ...`` (``_stage``); then write the peaks."""
    result: dict[str, Any] = {}
    if kind == "_build":
        result = build_worker(*args)
    else:
        from rlhf.cli import main

        code = main(args)
        if code != 0:
            sys.exit(code)
    Path(result_path).write_text(json.dumps({**result, **_peaks()}))


# ----------------------------------------------------------------------------------------------
# Data


def _pack(rows: list[dict[str, Any]], size: Callable[[dict[str, Any]], int], budget: int) -> Iterator[list[dict]]:
    """Groups of consecutive rows (cycling through them) of at most ``budget`` tokens together; longer rows skipped."""
    group: list[dict[str, Any]] = []
    used = skipped = 0
    for row in itertools.cycle(rows):
        n = size(row)
        if n > budget:
            skipped += 1
            if skipped > len(rows):
                raise SystemExit(f"gpu_check: no row of the tiny sets fits in {budget} tokens: raise --max-length")
            continue
        skipped = 0
        if used + n > budget:
            yield group
            group, used = [], 0
        group.append(row)
        used += n


def pack_data(raw: Path, out: Path, max_length: int, model_dir: Path) -> Path:
    """The tiny sets in ``raw`` packed into multi-turn rows of about ``max_length`` tokens: sft/, pairs/, prompts/.

    Lengths are counted with the built model's tokenizer, the one the stages load: transformers picks the class
    from the model type (Qwen2's splits digits apart), so it counts more tokens than the tiny model's own.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def tokens(messages: list[dict[str, str]]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    def context(group: list[dict[str, Any]]) -> list[dict[str, str]]:  # earlier pairs as turns before the prompt
        return [m for row in group[:-1] for m in (*row["prompt"], *row["chosen"])] + group[-1]["prompt"]

    def conversation(row: dict[str, Any]) -> int:
        return tokens(row["messages"])

    def longest(row: dict[str, Any]) -> int:
        return max(tokens(row["prompt"] + row["chosen"]), tokens(row["prompt"] + row["rejected"]))

    def read(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (raw / name / "train.jsonl").read_text().splitlines()]

    pairs = read("pairs")
    budget = int(0.9 * max_length)  # the chat template's own tokens and the trainers' EOS: stay clear of drops
    sets = {
        "sft": ({"messages": [m for r in g for m in r["messages"]]} for g in _pack(read("sft"), conversation, budget)),
        "pairs": (
            {"prompt": context(g), "chosen": g[-1]["chosen"], "rejected": g[-1]["rejected"]}
            for g in _pack(pairs, longest, budget)
        ),
        "prompts": ({"prompt": context(g)} for g in _pack(pairs, longest, budget // 2)),
    }
    for name, rows in sets.items():
        packed = [json.dumps(row) + "\n" for row in itertools.islice(rows, TRAIN_ROWS + TEST_ROWS)]
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "train.jsonl").write_text("".join(packed[:TRAIN_ROWS]))
        (out / name / "test.jsonl").write_text("".join(packed[TRAIN_ROWS:]))
    return out


# ----------------------------------------------------------------------------------------------
# Running the stages


class Check:
    """The run: its options, the clock, the results so far (written to ``--out`` after every step)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.env = dict(os.environ)
        if args.device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.results: dict[str, Any] = {
            "device": args.device,
            "settings": {"steps": args.steps, "max_length": args.max_length, "shape": args.shape},
            "models": {},
        }
        self.data: Path | None = None  # written once, after the first model is built (shared by both models)

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)

    def save(self) -> None:
        self.results["total_seconds"] = time.perf_counter() - self.started
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.results, indent=2) + "\n")

    def process(self, label: str, kind: str, args: Sequence[str]) -> dict[str, Any]:
        """``gpu_check.py KIND RESULT ARGS`` in a fresh process; its result, peaks and wall time."""
        result_path, log_path = self.args.workdir / f"{label}.json", self.args.workdir / f"{label}.log"
        result_path.unlink(missing_ok=True)
        self.say(f"{label}: started (log: {log_path})")
        started = time.perf_counter()
        with log_path.open("w") as log:
            code = subprocess.call(
                [sys.executable, str(Path(__file__).resolve()), kind, str(result_path), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        wall = time.perf_counter() - started
        if code != 0 or not result_path.is_file():
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
            self.results["error"] = f"{label}: exited with {code} after {wall:.0f} s; see {log_path}"
            self.save()
            sys.exit(f"{tail}\ngpu_check: {self.results['error']}")
        result = {"wall_seconds": wall, **json.loads(result_path.read_text())}
        peak = f", peak {result['peak_allocated_mib']:.0f} MiB allocated" if "peak_allocated_mib" in result else ""
        self.say(f"{label}: finished in {wall:.1f} s{peak}, peak RSS {result['peak_rss_mib']:.0f} MiB")
        return result

    def write_data(self, model_dir: Path) -> Path:
        """``rlhf data tiny`` (the built-in sets as JSONL), packed to ``max_length`` for the recipes."""
        raw, out = self.args.workdir / "tiny-data", self.args.workdir / "data"
        self.say(f"data: the tiny sets packed to {self.args.max_length} tokens per row into {out}")
        command = [sys.executable, "-m", "rlhf", "data", "tiny", "--out", str(raw)]
        subprocess.run(command, check=True, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL)
        return pack_data(raw, out, self.args.max_length, model_dir)

    def stage(self, name: str, stage: str, plan: Plan, options: dict[str, Any]) -> dict[str, Any]:
        """One stage's process with the recipe ``stage``.yaml; ``grpo`` is ``rlhf ppo`` with ``grpo.yaml``."""
        command = "ppo" if stage == "grpo" else stage
        argv = [command, "--config", str(REPO / "recipes" / plan.recipe / f"{stage}.yaml")]
        argv += [item for key, value in options.items() for item in (f"--{key}", str(value))]
        result = self.process(f"{name}-{stage}", "_stage", argv)
        out = Path(options["output_dir"])
        rate = ppo_tokens_per_second if command == "ppo" else trainer_tokens_per_second
        result["tokens_per_second"] = rate(out)
        result["argv"] = argv
        self.results["models"][name]["stages"][stage] = result
        self.save()
        return result

    def run_model(self, name: str) -> None:
        plan, args = PLANS[name], self.args
        root = args.workdir / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        steps = math.ceil(args.steps * plan.step_fraction)
        built = self.process(f"{name}-build", "_build", [name, str(root / "model")])
        model = self.results["models"][name] = {
            "parameters": built["parameters"],
            "recipe": f"recipes/{plan.recipe}",
            "steps": steps,
            "build": built,
            "stages": {},
        }
        data = self.data = self.data or self.write_data(root / "model")
        common = {"max_steps": steps, "max_length": args.max_length, "logging_steps": 1, "save_strategy": "no"}
        common |= {"report_to": "none", "disable_tqdm": "true"}
        sft_dir = root / "sft"
        sft = {"model_name_or_path": root / "model", "dataset_name": data / "sft", "output_dir": sft_dir}
        self.stage(name, "sft", plan, {**sft, **common, "merge_adapter": str(plan.merge).lower()})
        base = sft_dir / "merged" if plan.merge else root / "model"
        reward = {"model_name_or_path": base, "dataset_name": data / "pairs", "output_dir": root / "reward"}
        self.stage(name, "reward", plan, {**reward, **common})
        ppo = {"model_name_or_path": base, "reward_model_path": root / "reward", "dataset_name": data / "prompts"}
        ppo |= {"output_dir": root / "ppo", "steps": steps, "eval_max_prompts": 0, "disable_tqdm": "true"}
        self.stage(name, "ppo", plan, {**ppo, **plan.ppo_sizes})
        if name != BIG:  # the GRPO recipe (groups of 8, packed), on the same base and reward model
            self.stage(name, "grpo", plan, {**ppo, "output_dir": root / "grpo", **plan.ppo_sizes})
        basis = "peak_allocated_mib" if args.device == "cuda" else "peak_rss_mib"
        model["peak_basis"] = basis
        for stage in ("ppo", "grpo"):
            if stage in model["stages"]:
                model[f"{stage}_over_sft_peak"] = model["stages"][stage][basis] / model["stages"]["sft"][basis]
        self.save()


def trainer_tokens_per_second(run_dir: Path) -> float:
    """Non-padding tokens trained on (TRL's cumulative ``num_tokens``) over the trainer's ``train_runtime``."""
    history = [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()]
    tokens = max(h["num_tokens"] for h in history if "num_tokens" in h)
    return tokens / next(h["train_runtime"] for h in history if "train_runtime" in h)


def ppo_tokens_per_second(run_dir: Path) -> float:
    """Median over iterations of response tokens per second of an iteration (generate, score, update)."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(s["throughput/tokens_per_second"] for s in steps)


# ----------------------------------------------------------------------------------------------
# Output


def render(results: dict[str, Any]) -> str:
    def mib(stage: dict[str, Any], key: str) -> str:
        return f"{stage[key]:.0f}" if key in stage else "-"

    rows, ratios = [], []
    for name, model in results["models"].items():
        for stage_name, stage in model["stages"].items():
            rows.append(
                [
                    f"{name} {stage_name}",
                    f"{stage['wall_seconds']:.1f}",
                    mib(stage, "peak_allocated_mib"),
                    mib(stage, "peak_reserved_mib"),
                    mib(stage, "peak_rss_mib"),
                    f"{stage['tokens_per_second']:.0f}",
                ]
            )
        what = "GPU memory allocated" if model.get("peak_basis") == "peak_allocated_mib" else "RSS"
        for stage_name in ("ppo", "grpo"):
            if f"{stage_name}_over_sft_peak" in model:
                ratio = model[f"{stage_name}_over_sft_peak"]
                ratios.append(f"{name}: {stage_name.upper()} / SFT peak {what}: {ratio:.2f}x")
    gpu = next((s["gpu"] for m in results["models"].values() for s in m["stages"].values() if "gpu" in s), "CPU")
    title = f"gpu_check on {gpu}: {results['settings']['steps']} steps, max_length {results['settings']['max_length']}"
    header = ["stage", "wall s", "peak alloc MiB", "peak reserved MiB", "peak RSS MiB", "tokens/s"]
    notes = [*ratios, *results.get("notes", []), f"total {results['total_seconds']:.0f} s"]
    return "\n".join([_table(title, header, rows), *notes])


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke test of the flow")
    parser.add_argument("--shape", choices=["qwen2.5-0.5b", "tiny"], default="qwen2.5-0.5b", help="the main model")
    parser.add_argument("--skip-7b", action="store_true", help="skip the Qwen2.5-7B-shape memory check")
    parser.add_argument("--steps", type=int, default=3, help="SFT/reward steps, PPO iterations (7B: half); >= 2")
    parser.add_argument("--max-length", type=int, help="tokens per training row; default: recipe's, 64 for tiny")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "gpu_check", help="models, data, runs, logs")
    parser.add_argument("--out", type=Path, help="results JSON; default WORKDIR/gpu_check.json")
    args = parser.parse_args(argv)
    if args.steps < 2:  # the recipes warm up from learning rate 0: one step leaves an adapter the SFT merge refuses
        parser.error("--steps must be at least 2")
    if args.max_length is None:
        import yaml

        recipe = REPO / "recipes" / PLANS[args.shape].recipe / "sft.yaml"
        args.max_length = 64 if args.shape == "tiny" else int(yaml.safe_load(recipe.read_text())["max_length"])
    args.out = args.out or args.workdir / "gpu_check.json"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if argv[:1] in (["_build"], ["_stage"]):
        worker_main(argv[0], argv[1], argv[2:])
        return
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; pass --device cpu --shape tiny for the CPU smoke test of the same flow")
    args.workdir.mkdir(parents=True, exist_ok=True)
    check = Check(args)
    check.run_model(args.shape)
    gpu_gib = check.results["models"][args.shape]["stages"]["sft"].get("gpu_total_mib", 0) / 1024
    if args.skip_7b:
        note = "7B skipped (--skip-7b)"
    elif args.device == "cpu":
        note = "7B skipped: it needs a GPU"
    elif gpu_gib < MIN_GPU_GIB_FOR_7B:
        note = (
            f"7B skipped: its bf16 weights are built on the GPU, which has {gpu_gib:.0f} GiB (< {MIN_GPU_GIB_FOR_7B})"
        )
    else:
        note = ""
        check.run_model(BIG)
    check.results["notes"] = [note] if note else []
    check.save()
    print(render(check.results), flush=True)
    check.say(f"results: {args.out}")


if __name__ == "__main__":
    main()
