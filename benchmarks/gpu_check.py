"""GPU check of the real recipes: wall time, peak GPU memory and tokens/s of sft, reward, ppo and grpo, in one command.

    python benchmarks/gpu_check.py --out $OUT                          # one GPU: the 7B shape, then the 0.5B one
    python benchmarks/gpu_check.py --out $OUT --shape qwen2.5-7b       # one shape alone
    python benchmarks/gpu_check.py --out $OUT --set optim=adamw_torch  # an option of every stage (ppo.KEY: one stage)
    python benchmarks/gpu_check.py --device cpu --shape tiny --out runs/gpu-check   # the same flow on CPU (smoke test)

docs/gpu-check.md is the procedure on a lent GPU machine (which has no package registry: the missing packages
travel as wheels, ``scripts/prepare_device_wheels.py``) and what comes back.

Why. The real recipes (``recipes/qwen2.5-0.5b-instruct`` and ``recipes/qwen2.5-7b-instruct``: 4-bit NF4 with
double quantization, LoRA on every linear layer, paged 8-bit AdamW, gradient checkpointing, bf16) run only on the
tiny model on CPU in the test suite. Whether they fit a 16 GB card, how fast they go, and whether PPO on one shared
4-bit base stays near SFT's memory can only be measured on a GPU. Speed and memory do not depend on the weights'
values, so the models are random-weight models of the real architectures' shapes (Qwen2.5-0.5B: 494M parameters;
Qwen2.5-7B: 7.6B), built offline from their configs with the tiny tokenizer grown to their vocabularies
(``benchmarks/bench_ppo.py``: every id a random policy samples decodes to text of as many tokens), and kept in
``--cache`` for the next run.

What runs, each step in its own process (so each peak is that stage's, and a stage that hangs is killed at its
timeout with what it measured so far kept):
  pre-flight  versions; the stage modules import; one NF4 4-bit layer forward and backward in bf16 against its
              dequantized weights; one paged 8-bit AdamW step against torch's AdamW. The check stops here, with
              one line saying what failed, if any of it does (seconds, instead of minutes into a stage).
  per shape   (the 7B one first: memory is its question) the random model (built or taken from the cache);
              ``rlhf sft`` with the recipe (merged, as the recipe says; not for 7B, whose 15 GB merge and check
              would take longer than the rest); ``rlhf reward`` on that base; ``rlhf ppo``; then (not for 7B)
              ``rlhf ppo`` with the GRPO recipe (groups of 8 answers, packed). Only paths, step counts,
              ``max_length`` and the PPO rollout sizes are set on the command line, plus ``--set``; the rest
              (quantization, optimizer, batch sizes, ``max_new_tokens``, precision: bf16 on Ampere or newer)
              comes from the recipes, so recipe changes flow through.

Data: the built-in tiny sets packed into multi-turn rows of about ``max_length`` tokens (the recipe's 1024), so
memory and speed are those of full-length rows; PPO prompts of about half that. A random model almost never
samples EOS, so every PPO answer is ``max_new_tokens`` long (the recipe's 128): the worst case for memory.

On a machine with 2 or more GPUs, the sharded recipes then run on the last shape (default 0.5B), each stage
under ``torchrun --nproc_per_node <GPUs>``: ``rlhf sft|reward|dpo|kto --fsdp "full_shard auto_wrap"`` (TRL's trainers
on Accelerate's FSDP2, a 4-bit base stored in bf16) and ``rlhf ppo --fsdp full_shard`` (FSDP2 over the one base),
with ``optim adamw_torch`` (8-bit optimizers over sharded parameters are unverified), reporting every process's
peak memory. On one GPU they are skipped with a note saying so; on CPU too, unless ``--sharded-processes N`` asks
for the one sharded stage that runs on CPU processes (ppo; Accelerate shards the others on GPUs only).

Measured per stage:
- tokens/s after the first optimizer step or iteration (it carries the warm-up: kernels, allocator, caches), each
  labelled with what it counts: SFT, the input tokens trained on (TRL's ``num_tokens``: non-padding); reward, the
  same over chosen and rejected sequences; PPO/GRPO, sampled answer tokens per second of whole iterations
  (sampling, scoring and update together);
- peak GPU memory: PyTorch's peak allocated and reserved, and the device's peak use (``torch.cuda.mem_get_info``,
  sampled every half second: what ``nvidia-smi`` shows, the CUDA context and memory outside PyTorch's allocator
  included). bitsandbytes keeps a paged optimizer's state in CUDA managed memory only for tensors of at least
  1e5 elements (smaller ones are ordinary allocations): of the recipes' LoRA matrices (rank 16), only the 7B's
  MLP ones are that large; managed pages resident on the GPU count in the device's use, not in PyTorch's;
- wall time of the process (start-up, loading and 4-bit quantization, training, saving, merge) and its peak RSS;
- for PPO, how many tokens the sampled answers re-encode to, over the tokens sampled (1.0: the reward model scores
  answers of the sampled length; near 0 when ids decode to nothing).

What comes back (``--out``, the device's ``$OUT``: at most 8 files there): ``gpu_check.json`` (everything, written
after every step) and ``gpu_check-logs.tar.gz`` (every process's log, the stages' per-step metrics and resolved
configs), both rewritten after every step, so a run cut short still returns what it measured; the printed table
last.

Time: the whole default run, set-up included, is sized for 8 minutes on one H100 by the estimate printed at the
start (``Rates``: assumptions, not measurements; the table shows each stage's estimate beside its time, to
correct them). ``--deadline`` (default 9 minutes, under a device command's 10) stops the run in time to write its
results: a stage gets at most ``--stage-timeout`` seconds and what is left of the deadline, and one that cannot
start in time is skipped with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# benchmarks/ is sys.path[0] when this file runs as a script; bench_ppo imports only the standard library at the top.
from bench_ppo import ARCHITECTURES, _table, build_random_model, grow_vocabulary

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
MIN_GPU_GIB_FOR_7B = 20  # the 7B random weights are built in bf16 on the GPU (15 GB)
TRAIN_ROWS, TEST_ROWS = 64, 8
RESULTS, ARCHIVE = "gpu_check.json", "gpu_check-logs.tar.gz"
LOG_CAP = 4 * MIB  # a log longer than this goes into the archive as its last 4 MiB (16 MiB come back per file)
STAGES = ("sft", "reward", "ppo", "grpo")
SHARDED_STAGES = ("sft", "reward", "dpo", "kto", "ppo")  # each under torchrun with --fsdp
TRAINER_STAGES = ("sft", "reward", "dpo", "kto")  # TRL's trainers: Accelerate shards them on GPUs only


@dataclass(frozen=True)
class Plan:
    """One model of the check: its shape, the recipes it runs with, and what differs from them."""

    architecture: dict[str, Any]
    recipe: str
    steps: int  # optimizer steps (SFT, reward) and iterations (PPO); the first is warm-up, not measured
    ppo_sizes: dict[str, int]  # PPO options passed on the command line (the rest come from the recipe)
    merge: bool  # SFT writes a merged model that reward and PPO start from; False: they use the base itself
    stages: tuple[str, ...] = STAGES


QWEN_05B = ARCHITECTURES["qwen2.5-0.5b"]
PLANS: dict[str, Plan] = {
    # 2 layers, hidden 64: the Qwen2 architecture (GQA, q/k/v biases, tied embeddings) small enough for CPU; 4096
    # ids, most of them beyond the tiny tokenizer's 606, as at the real shapes (grow_vocabulary covers them)
    "tiny": Plan(
        {
            **QWEN_05B,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 4096,
            "max_position_embeddings": 2048,
        },
        "qwen2.5-0.5b-instruct",
        3,
        {
            "rollout_batch_size": 8,
            "mini_batch_size": 4,
            "micro_batch_size": 2,
            "forward_batch_size": 8,
            "max_new_tokens": 8,
        },
        merge=True,
    ),
    "qwen2.5-0.5b": Plan(QWEN_05B, "qwen2.5-0.5b-instruct", 4, {"rollout_batch_size": 16, "mini_batch_size": 16}, True),
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
        3,
        {"rollout_batch_size": 8, "mini_batch_size": 4},
        merge=False,
        stages=("sft", "reward", "ppo"),
    ),
}
BIG = "qwen2.5-7b"
RATE_LABELS = {
    "sft": "input tokens trained/s",
    "reward": "chosen+rejected tokens/s",
    "ppo": "answer tokens/s (iteration)",
    "grpo": "answer tokens/s (iteration)",
    "dpo": "input tokens trained/s",
    "kto": "input tokens trained/s",
}


# ----------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class Rates:
    """What the estimate assumes of one H100 (bf16): leads from public figures, not measurements here.

    The table printed at the end shows each stage's estimate beside its time: correct these from it.
    """

    install_seconds: float = 10.0  # pip installing the carried wheels (docs/gpu-check.md)
    process_seconds: float = 15.0  # a fresh process: imports (torch, transformers, TRL, datasets, PEFT), CUDA context
    load_bytes_per_second: float = 1e9  # reading bf16 safetensors and quantizing them to NF4
    save_bytes_per_second: float = 1e9  # writing a model (the random weights, a merge)
    train_flops: float = 1.5e14  # FLOP/s of QLoRA forward/backward: a fifth of the 790 TFLOP/s of a bf16 matmul
    decode_layer_seconds: float = 1e-3  # per layer per sampled token: generate + PEFT + bitsandbytes launches
    dequant_bytes_per_second: float = 2e12  # each sampled token reads and dequantizes every 4-bit weight


def _param_count(architecture: dict[str, Any]) -> float:
    """Parameters of a Qwen2/Llama-style decoder from its config (embeddings tied or not)."""
    hidden, inter, layers = (
        architecture["hidden_size"],
        architecture["intermediate_size"],
        architecture["num_hidden_layers"],
    )
    head_dim = architecture.get("head_dim") or hidden // architecture["num_attention_heads"]
    kv = architecture["num_key_value_heads"] * head_dim
    per_layer = hidden * (2 * hidden + 2 * kv) + 3 * hidden * inter
    embeddings = architecture["vocab_size"] * hidden * (1 if architecture.get("tie_word_embeddings") else 2)
    return float(layers * per_layer + embeddings)


def estimate(name: str, recipes: dict[str, dict[str, Any]], max_length: int, rates: Rates) -> dict[str, float]:
    """Seconds of each step of one shape on one H100, by :class:`Rates` and the recipes' batch sizes."""
    plan = PLANS[name]
    params = _param_count(plan.architecture)
    layers = plan.architecture["num_hidden_layers"]
    model_load = 2 * params / rates.load_bytes_per_second
    load = rates.process_seconds + model_load
    row = 0.9 * max_length  # rows are packed to 90% of max_length (pack_data)
    train_token = 6 * params / rates.train_flops  # forward, recomputation (checkpointing), backward to the LoRAs
    seconds = {"build": rates.process_seconds + 2 * params / rates.save_bytes_per_second}
    for stage in plan.stages:
        recipe = recipes[stage]
        if stage in TRAINER_STAGES:
            rows = recipe["per_device_train_batch_size"] * recipe.get("gradient_accumulation_steps", 1)
            # DPO and KTO also run the reference (adapter off): about a reward pass more per sequence
            sequences = rows * {"sft": 1, "reward": 2, "dpo": 3, "kto": 2}[stage]
            seconds[stage] = load + plan.steps * sequences * row * train_token
            if stage == "sft" and plan.merge:  # dequantize, merge, save, then load three models to check it
                seconds[stage] += 3 * model_load + 2 * params / rates.save_bytes_per_second
            continue
        episodes = recipe["rollout_batch_size"]
        tokens = episodes * (row / 2 + recipe["max_new_tokens"])
        critic = recipe.get("advantage_estimator", "gae") == "gae"
        sample = recipe["max_new_tokens"] * (
            layers * rates.decode_layer_seconds + 4.5 * params / rates.dequant_bytes_per_second
        )
        score = (4 if critic else 3) * tokens * 2 * params / rates.train_flops
        update = recipe["ppo_epochs"] * (2 if critic else 1) * tokens * train_token
        seconds[stage] = load + plan.steps * (sample + score + update)
    return seconds


# ----------------------------------------------------------------------------------------------
# Workers: each runs in its own process (python gpu_check.py _preflight|_build|_data|_stage RESULT ...)


class Monitor:
    """This process's measurements, written to ``path`` every 2 s and at the end: a stage killed at its timeout
    leaves what it measured so far.

    A thread samples the device's use (``mem_get_info``: every process, the CUDA context and managed memory
    included) every half second once CUDA is up, and keeps PyTorch's peaks; ``record`` adds other measurements
    (step times).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.device_used_peak = 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def record(self, key: str, value: Any) -> None:
        with self.lock:
            self.data.setdefault(key, []).append(value)

    def update(self, values: dict[str, Any]) -> None:
        with self.lock:
            self.data.update(values)

    def peaks(self) -> dict[str, Any]:
        peaks: dict[str, Any] = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # kB
        torch = sys.modules.get("torch")  # not imported here: the worker may be importing it
        if torch is not None and hasattr(torch, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
            device = int(os.environ.get("LOCAL_RANK", 0))  # under torchrun: this process's GPU
            free, total = torch.cuda.mem_get_info(device)
            self.device_used_peak = max(self.device_used_peak, total - free)
            props = torch.cuda.get_device_properties(device)
            peaks.update(
                gpu=props.name,
                gpu_capability=f"{props.major}.{props.minor}",
                gpu_count=torch.cuda.device_count(),
                gpu_total_mib=total / MIB,
                peak_allocated_mib=torch.cuda.max_memory_allocated(device) / MIB,
                peak_reserved_mib=torch.cuda.max_memory_reserved(device) / MIB,
                peak_device_used_mib=self.device_used_peak / MIB,
            )
        return peaks

    def write(self) -> None:
        with self.lock:
            text = json.dumps({**self.data, **self.peaks()})
        self.path.with_suffix(".tmp").write_text(text)
        self.path.with_suffix(".tmp").replace(self.path)

    def _run(self) -> None:
        ticks = 0
        while not self.stopped.wait(0.5):
            ticks += 1
            if ticks % 4 == 0:
                self.write()
            else:
                self.peaks()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.write()


def _clock_trainers(monitor: Monitor) -> None:
    """Record the time and TRL's cumulative ``num_tokens`` at every optimizer step of any Trainer in this process."""
    from transformers import Trainer, TrainerCallback

    class StepClock(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if logs and "loss" in logs and "num_tokens" in logs:  # a training step's log, not evaluation's
                monitor.record("steps", [state.global_step, time.perf_counter(), float(logs["num_tokens"])])

    original = Trainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.add_callback(StepClock())
        return original(self, *args, **kwargs)

    Trainer.train = train


def _clock_sampler(monitor: Monitor) -> None:
    """Record, per rollout, the answer tokens sampled and how many tokens their decoded texts encode to.

    The encoding runs inside the iteration's sampling time: milliseconds for a rollout of 16 x 128 tokens.
    """
    from rlhf.policy.sampler import PolicySampler

    original = PolicySampler.generate

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        samples = original(self, *args, **kwargs)
        encoded = self.tokenizer(samples.texts, add_special_tokens=False)["input_ids"]
        ended = float(samples.ended.sum())  # the EOS is sampled and counted in the mask, not in the text
        monitor.record("decoded", [float(samples.mask.sum()) - ended, float(sum(len(ids) for ids in encoded))])
        return samples

    PolicySampler.generate = generate


def stage_worker(result: Path, *argv: str) -> None:
    """``rlhf <stage> ARGV`` with its optimizer steps and rollouts timed and its memory sampled.

    Under torchrun each process writes its own ``<result>-rank<R>.json``.
    """
    if "RANK" in os.environ:
        result = result.with_name(f"{result.stem}-rank{os.environ['RANK']}{result.suffix}")
    monitor = Monitor(result)
    from rlhf.cli import main

    _clock_trainers(monitor)
    if argv[0] == "ppo":
        _clock_sampler(monitor)
    code = main(list(argv))
    monitor.stop()
    if code != 0:
        sys.exit(code)


def build_worker(result: Path, shape: str, path: str) -> None:
    """A random-weight model of ``shape``, saved with its tokenizer: bf16 on the GPU if any, else fp32."""
    monitor = Monitor(result)
    import torch

    built = build_random_model(PLANS[shape].architecture, path, "cuda" if torch.cuda.is_available() else "cpu")
    monitor.update(built)
    monitor.stop()


def data_worker(result: Path, model_dir: str, out: str, max_length: str) -> None:
    """``rlhf data tiny`` (the built-in sets as JSONL), packed to ``max_length`` for the recipes."""
    monitor = Monitor(result)
    from rlhf.cli import main

    raw = Path(out) / "tiny-data"
    if main(["data", "tiny", "--out", str(raw)]) != 0:
        sys.exit("gpu_check: rlhf data tiny failed")
    monitor.update({"rows": pack_data(raw, Path(out), int(max_length), Path(model_dir))})
    monitor.stop()


def _nf4_forward(device: str) -> str:
    """One NF4 (double-quantized) layer in bf16: forward and backward, against its dequantized weights in fp32."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(1024, 512, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    weight = torch.randn(512, 1024) / 32
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
    layer = layer.to(device)  # quantizes
    x = torch.randn(16, 1024, dtype=torch.bfloat16, device=device, requires_grad=True)
    y = layer(x)
    y.float().square().sum().backward()
    dequantized = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    reference = x.detach().float() @ dequantized.T
    error = float((y.float() - reference).norm() / reference.norm())
    if y.dtype != torch.bfloat16 or x.grad is None or not torch.isfinite(x.grad).all() or not error < 2e-2:
        raise RuntimeError(
            f"output {y.dtype}, relative error {error:.2e} (bf16: < 2e-2), input grad {x.grad is not None}"
        )
    return f"bf16 out, relative error {error:.1e} vs the dequantized weights"


def _paged_adamw_step(device: str) -> str:
    """One PagedAdamW8bit step of a tensor large enough to be paged (>= 1e5 elements), against torch's AdamW."""
    import bitsandbytes as bnb
    import torch

    torch.manual_seed(0)
    start, grad = torch.randn(512, 256, device=device), torch.randn(512, 256, device=device)
    ours, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours.grad, reference.grad = grad.clone(), grad.clone()
    optimizer = bnb.optim.PagedAdamW8bit([ours], lr=1e-3)
    optimizer.step()
    torch.optim.AdamW([reference], lr=1e-3).step()
    if device == "cuda":
        torch.cuda.synchronize()
    state = optimizer.state[ours]["state1"]
    paged = bool(getattr(state, "is_paged", False))
    moved, expected = (ours.detach() - start).flatten(), (reference.detach() - start).flatten()
    cosine = float(torch.nn.functional.cosine_similarity(moved, expected, 0))
    if state.dtype != torch.uint8 or not cosine > 0.99 or (device == "cuda" and not paged):
        raise RuntimeError(f"state {state.dtype}, paged {paged}, step's cosine to AdamW's {cosine:.4f} (> 0.99)")
    return f"8-bit state, paged: {paged}, step's cosine to torch AdamW's {cosine:.5f}"


PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "tokenizers")
PACKAGES += ("huggingface_hub", "numpy", "pyarrow", "fsspec", "safetensors")


def preflight_worker(result: Path, device: str) -> None:
    """Versions, then the checks in order; the first failure is recorded as ``failed`` and ends them."""
    import importlib
    import importlib.metadata
    import platform

    monitor = Monitor(result)
    report: dict[str, Any] = {"python": platform.python_version(), "versions": {}, "checks": {}}
    for name in PACKAGES:
        try:
            report["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            report["versions"][name] = None

    def imports() -> str:
        import torch

        for module in ("rlhf.stages.sft", "rlhf.stages.reward", "rlhf.stages.ppo"):
            importlib.import_module(module)
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch sees no CUDA GPU")
            props = torch.cuda.get_device_properties(0)
            report.update(
                cuda=torch.version.cuda,
                gpu_count=torch.cuda.device_count(),
                gpu=props.name,
                gpu_capability=f"{props.major}.{props.minor}",
                gpu_total_mib=props.total_memory / MIB,
            )
        return f"rlhf from {Path(importlib.import_module('rlhf').__file__ or '').parent}, torch {torch.__version__}"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("imports", imports),
        ("nf4 layer in bf16", lambda: _nf4_forward(device)),
        ("paged 8-bit AdamW step", lambda: _paged_adamw_step(device)),
    ]
    for name, check in checks:
        try:
            report["checks"][name] = check()
        except Exception as error:  # every failure is reported as one line, then the check stops
            report["failed"] = f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            break
    monitor.update(report)
    monitor.stop()


WORKERS: dict[str, Callable[..., None]] = {
    "_preflight": preflight_worker,
    "_build": build_worker,
    "_data": data_worker,
    "_stage": stage_worker,
}


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


def pack_data(raw: Path, out: Path, max_length: int, model_dir: Path) -> dict[str, int]:
    """The tiny sets in ``raw`` packed into rows of about ``max_length`` tokens: sft/, pairs/, prompts/, thumbs/.

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
        "thumbs": (  # KTO: each packed pair as a thumbs-up on its chosen answer and a thumbs-down on its rejected
            {"prompt": context(g), "completion": g[-1][side], "label": side == "chosen"}
            for g in _pack(pairs, longest, budget)
            for side in ("chosen", "rejected")
        ),
    }
    counts = {}
    for name, rows in sets.items():
        packed = [json.dumps(row) + "\n" for row in itertools.islice(rows, TRAIN_ROWS + TEST_ROWS)]
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "train.jsonl").write_text("".join(packed[:TRAIN_ROWS]))
        (out / name / "test.jsonl").write_text("".join(packed[TRAIN_ROWS:]))
        counts[name] = len(packed)
    return counts


# ----------------------------------------------------------------------------------------------
# Measurements read back from a stage's files


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def trainer_rate(steps: list[list[float]]) -> dict[str, Any]:
    """Tokens per second between the end of the first optimizer step and the end of the last (``[step, t, tokens]``)."""
    if len(steps) < 2:
        return {"measured_steps": 0}
    (_, t0, n0), (_, t1, n1) = steps[0], steps[-1]
    return {"tokens_per_second": (n1 - n0) / (t1 - t0), "measured_steps": len(steps) - 1}


def ppo_rate(run_dir: Path) -> dict[str, Any]:
    """Answer tokens per second of iterations 2.. (``metrics.jsonl``), and where their time went."""
    later = _rows(run_dir / "metrics.jsonl")[1:]
    if not later:
        return {"measured_steps": 0}
    phases = {phase: sum(s[f"time/{phase}"] for s in later) for phase in ("generate", "score", "update")}
    seconds = sum(phases.values())
    tokens = sum(s["throughput/tokens_per_second"] * sum(s[f"time/{p}"] for p in phases) for s in later)
    return {
        "tokens_per_second": tokens / seconds,
        "measured_steps": len(later),
        "iteration_seconds": statistics.median(sum(s[f"time/{p}"] for p in phases) for s in later),
        "phase_seconds": phases,
    }


# ----------------------------------------------------------------------------------------------
# Running the steps


class Stopped(Exception):
    """A step timed out, failed, or could not start before the deadline: the rest of its shape is skipped."""


@dataclass
class Check:
    """The run: its options, the clock, the results so far (written to ``--out`` after every step)."""

    args: argparse.Namespace
    estimates: dict[str, dict[str, float]]
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = dict(os.environ)
        # every worker imports this checkout's rlhf (each stage runs in its own process; nothing is installed)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH")) if p)
        self.env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        self.env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        if self.args.device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.results.update(
            device=self.args.device,
            settings={
                "shapes": self.args.shapes,
                "max_length": self.args.max_length,
                "set": self.args.set,
                "deadline_seconds": self.args.deadline,
                "stage_timeout_seconds": self.args.stage_timeout,
            },
            estimate_seconds=self.estimates,
            models={},
            notes=[],
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def save(self) -> None:
        """The results JSON and the log archive under ``--out``, replaced whole (a run killed now keeps them)."""
        self.results["total_seconds"] = self.elapsed()
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{RESULTS}.tmp").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / f"{RESULTS}.tmp").replace(out / RESULTS)
        with tarfile.open(out / f"{ARCHIVE}.tmp", "w:gz") as archive:
            for path in sorted(self.args.workdir.rglob("*")):
                name = path.relative_to(self.args.workdir)
                if path.is_file() and path.suffix in (".log", ".jsonl", ".yaml") and name.parts[0] != "data":
                    _add_capped(archive, path, str(name))
        (out / f"{ARCHIVE}.tmp").replace(out / ARCHIVE)

    def process(self, label: str, kind: str, args: Sequence[str], timeout: float, processes: int = 1) -> dict[str, Any]:
        """``gpu_check.py KIND RESULT ARGS`` in a fresh process; its result, wall time and status.

        ``processes`` > 1: under ``torchrun --nproc_per_node processes``; the result is the first process's,
        its memory peaks the highest of any process, and ``ranks`` holds every process's peaks.

        Killed (its whole process group) after ``timeout`` seconds: the result is then what its monitor last
        wrote, with ``timed_out``. A process that fails (a 7B stage out of memory, say) leaves ``failed`` and its
        log's last lines; :meth:`checked` turns either into :class:`Stopped`.
        """
        result_path, log_path = self.args.workdir / f"{label}.json", self.args.workdir / f"{label}.log"
        result_path.unlink(missing_ok=True)
        for stale in self.args.workdir.glob(f"{label}-rank*.json"):
            stale.unlink()
        self.say(f"{label}: started, timeout {timeout:.0f} s (log: {log_path})")
        started = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), kind, str(result_path), *args]
        if processes > 1:
            port = _free_port()
            command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", port]
        with log_path.open("w") as log:
            child = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,  # its own process group: a timeout kills the stage and its children
            )
            try:
                code = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                code = None
        wall = time.perf_counter() - started
        result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if processes > 1:
            result = _across_ranks(
                [json.loads(p.read_text()) for p in sorted(self.args.workdir.glob(f"{label}-rank*.json"))]
            )
        result["wall_seconds"] = wall
        if code is None:
            result["timed_out"] = True
            self.say(f"{label}: TIMED OUT after {wall:.0f} s; what it measured so far is kept")
            return result
        if code != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            result |= {"failed": f"exited with {code}; {log_path.name} in {ARCHIVE}", "log_tail": tail}
            print("\n".join(tail), flush=True)
            self.say(f"{label}: FAILED after {wall:.0f} s (exit code {code})")
            return result
        memory = f", device peak {result['peak_device_used_mib']:.0f} MiB" if "peak_device_used_mib" in result else ""
        self.say(f"{label}: finished in {wall:.1f} s{memory}, peak RSS {result.get('peak_rss_mib', 0):.0f} MiB")
        return result

    def checked(self, label: str, result: dict[str, Any]) -> dict[str, Any]:
        """``result``, once saved; :class:`Stopped` when its step timed out or failed."""
        self.save()
        if result.get("timed_out") or result.get("failed"):
            raise Stopped(f"{label} {'timed out' if result.get('timed_out') else 'failed'}: the rest of it is skipped")
        return result

    def timeout(self, label: str, estimate: float) -> float:
        """Seconds a step may run: ``--stage-timeout``, and no later than the deadline less time to write results."""
        left = self.args.deadline - self.elapsed() - 15
        if left < min(60.0, 2 * estimate):
            raise Stopped(f"{label} not started: {left:.0f} s left before the deadline, estimate {estimate:.0f} s")
        return min(self.args.stage_timeout, left)

    def preflight(self) -> dict[str, Any]:
        result = self.process("preflight", "_preflight", [self.args.device], self.timeout("preflight", 20))
        self.results["preflight"] = result
        self.save()
        return result

    def model(self, name: str) -> Path:
        """The random model of ``name`` from the cache, built (into the cache) when it is not there."""
        dtype = "bfloat16" if self.args.device == "cuda" else "float32"
        source = inspect.getsource(build_random_model) + inspect.getsource(grow_vocabulary)
        tiny_tokenizer = (REPO / "rlhf" / "tiny" / "model" / "tokenizer.json").read_bytes()
        key = json.dumps([PLANS[name].architecture, dtype, source], sort_keys=True).encode() + tiny_tokenizer
        folder = self.args.cache / f"{name}-{dtype}-{hashlib.sha256(key).hexdigest()[:12]}"
        entry = self.results["models"][name]
        if (folder / "config.json").is_file():
            entry["build"] = {"cached": str(folder)}
            self.say(f"{name}: random weights from the cache, {folder}")
            return folder
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        label = f"{name}-build"
        entry["build"] = self.process(
            label, "_build", [name, str(partial)], self.timeout(label, self.estimates[name]["build"])
        )
        self.checked(label, entry["build"])
        partial.replace(folder)
        return folder

    def stage(self, name: str, stage: str, options: dict[str, Any], processes: int = 1) -> dict[str, Any]:
        """One stage's process with the recipe ``stage``.yaml (``grpo`` is ``rlhf ppo`` with grpo.yaml).

        ``processes`` > 1: the stage sharded over that many processes (``--fsdp``), recorded under ``sharded``.
        """
        plan = PLANS[name]
        command = "ppo" if stage == "grpo" else stage
        argv = [command, "--config", str(REPO / "recipes" / plan.recipe / f"{stage}.yaml")]
        options = {**options, **self.args.overrides(stage)}
        argv += [item for key, value in options.items() for item in (f"--{key}", str(value))]
        label = f"{name}-{stage}" + (f"-sharded{processes}" if processes > 1 else "")
        estimate = self.estimates[name].get(stage, self.estimates[name].get("reward", 60.0))
        result = self.process(label, "_stage", argv, self.timeout(label, estimate), processes)
        if command == "ppo":
            result |= ppo_rate(Path(options["output_dir"]))
            decoded = result.pop("decoded", [])
            if decoded:
                result["decoded_over_sampled"] = sum(d[1] for d in decoded) / max(1.0, sum(d[0] for d in decoded))
        else:
            result |= trainer_rate(result.pop("steps", []))
        result |= {"rate_counts": RATE_LABELS[stage], "estimate_seconds": estimate, "argv": argv}
        self.results["models"][name]["sharded" if processes > 1 else "stages"][stage] = result
        return self.checked(label, result)

    def run_sharded(self, name: str, processes: int, stages: Sequence[str]) -> None:
        """The shape's recipes sharded over ``processes`` (after :meth:`run_model`, whose runs they start from)."""
        plan, root, data = PLANS[name], self.args.workdir / name, self.args.workdir / "data"
        self.results["models"][name]["sharded"] = {}
        self.results["models"][name]["sharded_processes"] = processes
        common = {**self.common(plan), "optim": "adamw_torch"}
        base = root / "sft" / "merged" if plan.merge else self.model(name)
        datasets = {"sft": data / "sft", "reward": data / "pairs", "dpo": data / "pairs", "kto": data / "thumbs"}
        for stage in stages:
            out = root / f"{stage}-sharded"
            if stage == "ppo":
                options = {**self.ppo_options(plan, root, base), "output_dir": out, **plan.ppo_sizes}
                self.stage(name, stage, {**options, "optim": "adamw_torch", "fsdp": "full_shard"}, processes)
                continue
            options = {**common, "dataset_name": datasets[stage], "output_dir": out, "fsdp": "full_shard auto_wrap"}
            options["model_name_or_path"] = self.model(name) if stage == "sft" else base
            if stage == "sft":
                options |= {"eval_on_start": "false", "merge_adapter": str(plan.merge).lower()}
            if stage != "sft":
                options["max_eval_samples"] = 4
            self.stage(name, stage, options, processes)
        self.save()

    def common(self, plan: Plan) -> dict[str, Any]:
        """Options of every TRL stage: the plan's steps and rows, no checkpoints or evaluation, no trackers."""
        common = {"max_steps": plan.steps, "max_length": self.args.max_length, "logging_steps": 1}
        common |= {"save_strategy": "no", "eval_strategy": "no", "report_to": "none", "disable_tqdm": "true"}
        if self.args.device == "cpu":  # transformers refuses bf16 (--set bf16=true) on CPU unless told it is the CPU
            common["use_cpu"] = "true"
        return common

    def ppo_options(self, plan: Plan, root: Path, base: Path) -> dict[str, Any]:
        """Options of the PPO and GRPO steps: the shape's reward run and prompts, no evaluation or checkpoints."""
        data = self.args.workdir / "data"
        ppo = {"model_name_or_path": base, "reward_model_path": root / "reward", "dataset_name": data / "prompts"}
        return ppo | {"steps": plan.steps, "eval_max_prompts": 0, "save_steps": 10_000, "disable_tqdm": "true"}

    def run_model(self, name: str) -> None:
        plan, args = PLANS[name], self.args
        self.results["models"][name] = {"parameters": _param_count(plan.architecture), "recipe": plan.recipe}
        self.results["models"][name]["stages"] = {}
        model = self.model(name)
        root = args.workdir / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        data = args.workdir / "data"
        if not (data / "prompts" / "train.jsonl").is_file():  # once: every shape has the same tokenizer
            label = "data"
            self.results["data"] = self.process(
                label, "_data", [str(model), str(data), str(args.max_length)], self.timeout(label, 20)
            )
            self.checked(label, self.results["data"])
        common = self.common(plan)
        sft_dir = root / "sft"
        sft = {"model_name_or_path": model, "dataset_name": data / "sft", "output_dir": sft_dir}
        self.stage(name, "sft", {**sft, **common, "eval_on_start": "false", "merge_adapter": str(plan.merge).lower()})
        base = sft_dir / "merged" if plan.merge else model
        reward = {"model_name_or_path": base, "dataset_name": data / "pairs", "output_dir": root / "reward"}
        self.stage(name, "reward", {**reward, **common, "max_eval_samples": 4})
        ppo = self.ppo_options(plan, root, base)
        for stage in plan.stages[2:]:
            self.stage(name, stage, {**ppo, "output_dir": root / stage, **plan.ppo_sizes})
        basis = "peak_allocated_mib" if args.device == "cuda" else "peak_rss_mib"
        entry = self.results["models"][name]
        entry["peak_basis"] = basis
        for stage in ("ppo", "grpo"):
            if stage in entry["stages"]:
                entry[f"{stage}_over_sft_peak"] = entry["stages"][stage][basis] / entry["stages"]["sft"][basis]
        self.save()


def _free_port() -> str:
    """A TCP port free on this machine now, for a torchrun job's rendezvous (a fixed one may be taken)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


PEAKS = ("peak_rss_mib", "peak_allocated_mib", "peak_reserved_mib", "peak_device_used_mib")


def _across_ranks(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One sharded step's result from its processes' (rank order): the first's measurements, each peak the highest
    of any process, and every process's peaks under ``ranks``."""
    if not ranks:
        return {}
    result = dict(ranks[0])
    for key in PEAKS:
        if all(key in rank for rank in ranks):
            result[key] = max(rank[key] for rank in ranks)
    result["ranks"] = [{key: rank[key] for key in PEAKS if key in rank} for rank in ranks]
    return result


def sharded_plan(device: str, processes: int) -> tuple[tuple[str, ...], str | None]:
    """The sharded steps this machine runs with ``processes`` processes, and a note on what is skipped and why."""
    if processes < 2:
        where = f"{processes} GPU" if device == "cuda" else "a CPU run (--sharded-processes 2 runs sharded ppo there)"
        return (), f"sharded recipes skipped: {where}; sharding needs 2 or more processes, one per GPU"
    if device == "cpu":
        trainers = ", ".join(TRAINER_STAGES)
        return ("ppo",), f"sharded {trainers} skipped on CPU: Accelerate shards TRL's trainers on GPUs only"
    return SHARDED_STAGES, None


def _add_capped(archive: tarfile.TarFile, path: Path, name: str) -> None:
    """``path`` into ``archive`` as ``name``; a file over LOG_CAP as its last LOG_CAP bytes (the end tells most)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size > LOG_CAP:
            handle.seek(size - LOG_CAP)
            body = f"[gpu_check: the first {size - LOG_CAP} bytes are cut]\n".encode() + handle.read()
        else:
            body = handle.read()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(body), int(time.time())
    archive.addfile(info, io.BytesIO(body))


# ----------------------------------------------------------------------------------------------
# Output


def render(results: dict[str, Any]) -> str:
    """One screen: a line per stage, then the ratios and notes."""

    def number(stage: dict[str, Any], key: str, digits: int = 0) -> str:
        return f"{stage[key]:.{digits}f}" if key in stage else "-"

    rows, ratios = [], []
    for name, model in results["models"].items():
        runs = [(f"{name} {s}", st) for s, st in model["stages"].items()]
        runs += [(f"{name} {s} fsdp x{model['sharded_processes']}", st) for s, st in model.get("sharded", {}).items()]
        for stage_name, stage in runs:
            status = "TIMEOUT" if stage.get("timed_out") else "FAILED" if stage.get("failed") else "ok"
            rows.append(
                [
                    stage_name,
                    status,
                    f"{stage['wall_seconds']:.0f}/{stage['estimate_seconds']:.0f}",
                    number(stage, "tokens_per_second"),
                    stage["rate_counts"],
                    number(stage, "peak_allocated_mib"),
                    number(stage, "peak_reserved_mib"),
                    number(stage, "peak_device_used_mib"),
                    number(stage, "peak_rss_mib"),
                ]
            )
        what = "allocated" if model.get("peak_basis") == "peak_allocated_mib" else "RSS"
        for stage_name, stage in model.get("sharded", {}).items():
            key = model.get("peak_basis", "peak_rss_mib")
            per_rank = ", ".join(f"{rank.get(key, 0):.0f}" for rank in stage.get("ranks", []))
            ratios.append(f"{name}: {stage_name} sharded, peak {what} MiB per process: {per_rank}")
        for stage_name in ("ppo", "grpo"):
            if f"{stage_name}_over_sft_peak" in model:
                ratio = model[f"{stage_name}_over_sft_peak"]
                ratios.append(f"{name}: {stage_name.upper()} / SFT peak {what} {ratio:.2f}x")
        decoded = [
            f"{s}: {st['decoded_over_sampled']:.2f}"
            for s, st in model["stages"].items()
            if "decoded_over_sampled" in st
        ]
        if decoded:
            ratios.append(f"{name}: answer tokens re-encoded / sampled: {', '.join(decoded)}")
    pre = results.get("preflight", {})
    gpu = pre.get("gpu", "CPU")
    title = f"gpu_check on {gpu}, max_length {results['settings']['max_length']} (tokens/s after the first step)"
    header = ["stage", "status", "wall/est s", "tokens/s", "counting", "alloc MiB", "reserved", "device used", "RSS"]
    notes = [*ratios, *results.get("notes", []), f"total {results['total_seconds']:.0f} s"]
    return "\n".join([_table(title, header, rows), *notes])


# ----------------------------------------------------------------------------------------------
# Command line


def _read_recipe(path: Path) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="where the results JSON and the log archive go (default: $OUT)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the same flow, as a rehearsal")
    parser.add_argument(
        "--shape",
        dest="shapes",
        action="append",
        choices=sorted(PLANS),
        help=f"a model to run, repeatable; {BIG} always first (default: {BIG} and qwen2.5-0.5b; CPU: tiny)",
    )
    parser.add_argument("--max-length", type=int, help="tokens per training row; default: the recipe's, 64 for tiny")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[STAGE.]KEY=VALUE",
        help="an option of every stage (optim=adamw_torch) or of one (ppo.max_new_tokens=64; stages: "
        f"{', '.join(STAGES)}), repeatable",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds: no step runs past this (default 540, under a device command's 600; CPU: 3600)",
    )
    parser.add_argument("--stage-timeout", type=float, help="seconds one step may take (default 300; CPU: 1800)")
    parser.add_argument(
        "--sharded-processes",
        type=int,
        help="processes of the sharded recipes (default: the GPUs there are; CPU: 0, none); under 2 they are skipped",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rlhf-gpu-check",
        help="data, stage runs, logs (emptied at the start)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "rlhf-gpu-check",
        help="random-weight models, reused by later runs",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        if not os.environ.get("OUT"):
            parser.error("--out is required where $OUT is not set")
        args.out = Path(os.environ["OUT"])
    cuda = args.device == "cuda"
    args.shapes = args.shapes or ([BIG, "qwen2.5-0.5b"] if cuda else ["tiny"])
    args.deadline = args.deadline or (540 if cuda else 3600)
    args.stage_timeout = args.stage_timeout or (300 if cuda else 1800)
    args.shapes = sorted(dict.fromkeys(args.shapes), key=lambda shape: shape != BIG)
    overrides: dict[str, dict[str, str]] = {stage: {} for stage in STAGES}
    for item in args.set:
        key, sep, value = item.partition("=")
        stage, dot, option = key.rpartition(".")
        if not sep or not option or (dot and stage not in STAGES):
            parser.error(f"--set {item}: expected KEY=VALUE or STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}")
        for target in [stage] if dot else STAGES:
            overrides[target][option] = value
    args.overrides = lambda stage: overrides[stage]
    if args.max_length is None:
        recipe = REPO / "recipes" / PLANS[args.shapes[0]].recipe / "sft.yaml"
        args.max_length = 64 if args.shapes == ["tiny"] else int(_read_recipe(recipe)["max_length"])
    return args


def estimates_for(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each shape's steps in seconds on one H100, the recipes read with ``--set`` applied."""
    import yaml

    rates = Rates()
    table: dict[str, dict[str, float]] = {}
    for name in args.shapes:
        plan = PLANS[name]
        recipes = {}
        for stage in plan.stages:
            recipe = _read_recipe(REPO / "recipes" / plan.recipe / f"{stage}.yaml")
            overrides = {key: yaml.safe_load(value) for key, value in args.overrides(stage).items()}
            recipes[stage] = {**recipe, **(plan.ppo_sizes if stage in ("ppo", "grpo") else {}), **overrides}
        table[name] = estimate(name, recipes, args.max_length, rates)
    process = rates.process_seconds
    table["setup"] = {"install": rates.install_seconds, "preflight": process, "data": process}
    return table


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in WORKERS:
        WORKERS[argv[0]](Path(argv[1]), *argv[2:])
        return
    args = parse_args(argv)
    estimates = estimates_for(args)
    total = sum(sum(steps.values()) for steps in estimates.values())
    print(
        f"gpu_check: shapes {', '.join(args.shapes)}; estimate on one H100, set-up included: {total / 60:.1f} min",
        flush=True,
    )
    for name, steps in estimates.items():
        print(f"  {name}: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in steps.items()), flush=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    check = Check(args, estimates)
    check.results["estimate_total_seconds"] = total
    preflight = check.preflight()
    if preflight.get("timed_out") or "failed" in preflight:
        reason = preflight.get("failed", "timed out")
        check.results["error"] = f"pre-flight failed: {reason}"
        check.save()
        sys.exit(f"gpu_check: pre-flight failed: {reason}; nothing else was run (see {args.out / RESULTS})")
    check.say("pre-flight: " + "; ".join(f"{k}: {v}" for k, v in preflight["checks"].items()))
    gpu_gib = preflight.get("gpu_total_mib", 0) / 1024
    stops = []
    for name in args.shapes:
        if name == BIG and args.device == "cuda" and gpu_gib < MIN_GPU_GIB_FOR_7B:
            gib = f"{gpu_gib:.0f} GiB (< {MIN_GPU_GIB_FOR_7B})"
            check.results["notes"].append(f"{BIG} skipped: its bf16 weights are built on the GPU, which has {gib}")
            continue
        try:
            check.run_model(name)
        except Stopped as stop:
            stops.append(str(stop))
            check.results["notes"].append(str(stop))
            check.say(str(stop))
        check.save()
    processes = args.sharded_processes
    if processes is None:
        processes = preflight.get("gpu_count", 0) if args.device == "cuda" else 0
    sharded, note = sharded_plan(args.device, processes)
    if note:
        check.results["notes"].append(note)
        check.say(note)
    last = args.shapes[-1]
    reward = check.results["models"].get(last, {}).get("stages", {}).get("reward", {})
    if sharded and reward and not (reward.get("failed") or reward.get("timed_out")):  # they start from its runs
        try:
            check.run_sharded(last, processes, sharded)
        except Stopped as stop:
            stops.append(str(stop))
            check.results["notes"].append(str(stop))
            check.say(str(stop))
        check.save()
    print(render(check.results), flush=True)
    check.say(f"results: {args.out / RESULTS}, logs: {args.out / ARCHIVE}")
    if stops:
        sys.exit(f"gpu_check: {'; '.join(stops)}")


if __name__ == "__main__":
    main()
