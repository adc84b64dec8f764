"""Benchmark of the PPO stage: throughput against TRL 1.12.0's PPOTrainer, and memory against our SFT stage.

    python benchmarks/bench_ppo.py                         # both parts: ~6 min on 2 idle cores, 15+ on busy ones
    python benchmarks/bench_ppo.py --skip-memory --repeats 1
    python benchmarks/bench_ppo.py --skip-speed --memory-model qwen2.5-0.5b --memory-batch-size 8

Speed. Our PPO (rlhf/ppo, one shared base: policy/reference/value/reward are adapters on ONE copy of
the weights) and TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` (the last TRL with a PPO; four
models: a LoRA policy whose reference is the base with the adapter disabled, plus separate full value
and reward models) train on the same tiny model (``builtin:tiny``), the same prompts
(``builtin:tiny/prompts``, chat template applied), the same rollout batch, response length, PPO
epochs, minibatches, temperature, EOS stop and missing-EOS penalty, in fp32 on CPU with a LoRA policy
on both sides. Why fp32: bitsandbytes' 4-bit kernels are several times slower than fp32 on CPU, so a
4-bit speed comparison belongs on a GPU. TRL runs in its own virtual environment (created once under
``--trl-venv`` with the very torch/transformers/peft/accelerate/datasets versions of this one, so only
the trainer differs). Each side runs in its own process, so peak RSS figures are comparable; both use
``--threads`` torch threads. Episodes/s = episodes trained / wall time of ``train()`` (model loading
excluded; it is reported separately). Runs alternate (ours, TRL, ours, ...) and the median of
``--repeats`` is taken, because other jobs may share the machine: read the ratio, not the absolutes.

What cannot be matched, and so is part of what is measured: TRL takes the rollout's old log-probs
from generate()'s scores, ours recomputes them with a forward pass (one more forward per iteration,
see rlhf/ppo/trainer.py); TRL's value model is a separate, fully trained sequence classifier (its
design), ours a LoRA and a head on the shared base; TRL's policy and value share one backward per
minibatch, ours runs each role's forward and backward as a pair; ours re-renders prompt + response
through the chat template before scoring (as the reward stage rendered its data); our timed
``train()`` includes the final checkpoint write (adapters, optimizer), TRL saves nothing. Sampled
responses differ between the two sides, so the rollout width (the longest response in the batch,
which sets the cost of the scoring and update passes) is recorded for both.

Memory. A random-weight model with a real architecture's shape (Qwen2.5-0.5B's config by default, ~494M
parameters; speed and memory do not depend on the weights' values) is written to a temp folder with the
tiny tokenizer grown to the shape's vocabulary (``grow_vocabulary``: every id the random policy samples
decodes to text, so the reward model scores answers of the sampled length). Then, each in a fresh
process: our SFT stage (``rlhf.stages.sft.main``) for a few steps, our DPO and KTO stages for as many
steps (the tiny pairs and thumbs; the reference is the adapter disabled), our PPO stage
(``rlhf.stages.ppo.main``) and the same stage as GRPO (critic-free: no value adapter or head in memory)
for a couple of iterations, same LoRA, same batch size, same sequence length (SFT rows of ``prompt +
response`` tokens), fp32 on CPU. The peak RSS of each process (``wait4``'s ``ru_maxrss``) is compared:
the goal is PPO <= 1.3x SFT. For reference TRL 1.12's PPO runs on the same model and settings too
(``--skip-trl-memory`` to skip it).

Results are printed as tables and written as JSON to ``--out``. Nothing here is part of the test suite.
The script imports only the standard library at the top, because it also runs as the worker inside
the TRL environment (``_worker`` subcommand), where the ``rlhf`` package is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRL_VERSION = "1.12.0"
# Versions the TRL environment must share with ours, so that only the trainer differs.
SHARED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")

# Real architectures' configs (from their config.json), for random-weight models of realistic shape.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {  # Qwen/Qwen2.5-0.5B: 494M parameters, 151936-token vocabulary, tied embeddings
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
    },
    "llama-3.2-1b-half": {  # Llama-3.2-1B's shape with 8 of its 16 layers: ~750M parameters, 128256 vocab
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 8,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
    },
}


# ----------------------------------------------------------------------------------------------
# Processes and peak memory


def _worker_env(threads: int) -> dict[str, str]:
    """Offline hub, fixed thread counts, quiet libraries: the same for every worker process."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
        WANDB_DISABLED="true",
    )
    return env


def run_worker(
    python: str, kind: str, spec: dict[str, Any], workdir: Path, label: str, script: str = __file__
) -> dict[str, Any]:
    """Run ``<script> _worker KIND SPEC`` (this file by default) in a fresh process; its result plus its peak RSS.

    ``os.wait4`` gives the rusage of that one child (``ru_maxrss``, the kernel's high-water mark of its
    resident set), unlike ``RUSAGE_CHILDREN``, which is the maximum over every child waited for so far.
    """
    spec_path = workdir / f"{label}.spec.json"
    result_path = workdir / f"{label}.result.json"
    log_path = workdir / f"{label}.log"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [python, str(Path(script).resolve()), "_worker", kind, str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_worker_env(spec.get("threads", 2)),
            cwd=str(workdir),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not result_path.exists():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{label}: worker exited with {proc.returncode}; last lines of {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports kB
    result["process_seconds"] = wall
    return result


def _vm_hwm_mib() -> float:
    """This process's peak resident set so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _record_widths(owner: Any, name: str, width: Callable[[Any], int]) -> list[int]:
    """Wrap ``owner.name`` (a rollout function) to record the width of what it returns.

    The update's cost grows with the rollout's width (longest response of the batch), which depends on
    when each sampled response stops: recorded on both sides so a difference in speed can be told from
    a difference in sampled lengths.
    """
    original = getattr(owner, name)
    widths: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        widths.append(int(width(out)))
        return out

    setattr(owner, name, wrapper)
    return widths


def _timed(cls: type, name: str, record: dict[str, float]) -> None:
    """Wrap ``cls.name`` so its wall time and the peak RSS before it starts are recorded.

    The stages build and run their trainer inside ``main``; wrapping ``train`` measures training alone
    (no model loading, no saving) without copying the stage's code into the benchmark.
    """
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        record["rss_before_train_mib"] = _vm_hwm_mib()
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            record["train_seconds"] = time.perf_counter() - started

    setattr(cls, name, wrapper)


# ----------------------------------------------------------------------------------------------
# Workers (run in subprocesses; heavy imports stay inside them)


def worker_prepare_prompts(spec: dict[str, Any]) -> dict[str, Any]:
    """The tiny task's PPO prompts rendered with the chat template, as token ids for TRL's side."""
    from transformers import AutoTokenizer

    from rlhf import data, models

    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model_path(spec["model"]))
    rows, _ = data.load_split("builtin:tiny/prompts", "train")
    ids = [
        tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for r in rows
    ]
    Path(spec["prompts_path"]).write_text(json.dumps(ids))
    lengths = sorted(len(i) for i in ids)
    return {"count": len(ids), "min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}


# Letters of the tokens a shape's vocabulary has beyond the tiny tokenizer's 606: Cyrillic (U+0410-U+044F),
# two UTF-8 bytes each, letters to every pre-tokenizer (GPT-2's byte-level one and Qwen2's), and in no text
# of the tiny task, so the merges that build them change how no other text is tokenized.
_LETTERS = [chr(code) for code in range(0x410, 0x450)]


def grow_vocabulary(spec: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A byte-level BPE tokenizer's ``tokenizer.json`` content grown to ``vocab_size`` tokens.

    Why. A random-weight model of a real shape (Qwen2.5's 151,936-token vocabulary) samples almost only
    ids beyond the tiny tokenizer's 606; those decode to nothing, so PPO's reward model, which scores the
    re-rendered text, saw little more than the prompt, and the benchmarks timed shorter passes than real
    ones. Masking those logits instead would make the sampler draw from another distribution than the
    policy whose log-probs PPO then measures (what ``rlhf/policy/sampling.py`` exists to prevent), and would have
    to be repeated inside TRL for the comparisons; a tokenizer of the shape's vocabulary changes nothing in
    the code measured, on either side.

    How. The new tokens are words of Cyrillic letters, as a real BPE vocabulary holds words: first each
    letter (its two bytes merged), then a space and one letter, a space and two letters, and so on, each
    made by one merge of the word without its last letter and that letter, ranked after every existing
    merge. So each new id decodes to a word that encodes back to that id, a run of them decodes to text of
    as many tokens, and text without Cyrillic letters is tokenized as before.
    """
    from tokenizers import pre_tokenizers

    spec = json.loads(json.dumps(spec))
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list[list[str]] = spec["model"]["merges"]
    next_id = max([*vocab.values(), *(t["id"] for t in spec["added_tokens"])]) + 1
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def symbols(text: str) -> str:  # the byte-level characters BPE works on
        return str(byte_level.pre_tokenize_str(text)[0][0])

    def words() -> Iterator[str]:
        yield from _LETTERS
        level = [" "]
        while True:
            level = [word + letter for word in level for letter in _LETTERS]
            yield from level

    for word in words():
        if next_id >= vocab_size:
            break
        token = symbols(word)
        left, right = (token[0], token[1:]) if len(word) == 1 else (symbols(word[:-1]), symbols(word[-1]))
        vocab[token] = next_id
        merges.append([left, right])
        next_id += 1
    return spec


def build_random_model(architecture: dict[str, Any], path: str, device: str = "cpu") -> dict[str, Any]:
    """A random-weight model of a real architecture's shape, saved with the tiny tokenizer grown to its vocabulary.

    On a GPU it is built there in bf16 (a 7B shape is 15 GB: too slow and too large to build on the
    host in fp32) and saved in 2 GB shards; on the CPU in fp32.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhf import models

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model_path("builtin:tiny"))
    arch = dict(architecture)
    model_type = arch.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        **arch,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype=str(dtype).removeprefix("torch."),
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path, safe_serialization=True, max_shard_size="2GB")
    tokenizer.model_max_length = config.max_position_embeddings  # the tiny model's 256 would be a false limit
    tokenizer.save_pretrained(path)
    spec_path = Path(path) / "tokenizer.json"
    spec_path.write_text(json.dumps(grow_vocabulary(json.loads(spec_path.read_text()), config.vocab_size)))
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype)}


def worker_build_model(spec: dict[str, Any]) -> dict[str, Any]:
    return build_random_model(spec["architecture"], spec["path"])


def worker_sft_data(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain-text SFT rows long enough to be cut to exactly ``max_length`` tokens (no padding in batches)."""
    from rlhf.tiny import corpus

    rows = corpus.sft_rows(4 * spec["rows"], split="train")
    texts = [m["content"] for r in rows for m in r["messages"]]
    per_row = max(1, len(texts) // spec["rows"])
    with Path(spec["path"]).open("w") as handle:
        for i in range(spec["rows"]):
            handle.write(json.dumps({"text": " ".join(texts[i * per_row : (i + 1) * per_row] * 4)}) + "\n")
    return {"rows": spec["rows"]}


def _set_threads(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])


def worker_ours_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """One of our stages (sft, reward, dpo, kto or ppo) through its ``main(argv)``, with ``train()`` timed."""
    _set_threads(spec)
    record: dict[str, float] = {}
    stage = spec["stage"]
    widths: list[int] = []
    if stage in ("sft", "dpo", "kto"):
        from transformers import Trainer

        from rlhf.stages import dpo, kto, sft

        module = {"sft": sft, "dpo": dpo, "kto": kto}[stage]
        _timed(Trainer, "train", record)
    elif stage == "reward":
        from rlhf.stages import reward as module
    else:
        from rlhf.policy.sampler import PolicySampler
        from rlhf.ppo.trainer import PPOTrainer
        from rlhf.stages import ppo as module

        _timed(PPOTrainer, "train", record)
        widths = _record_widths(PolicySampler, "generate", lambda samples: samples.response.shape[1])
    started = time.perf_counter()
    result = module.main(spec["argv"])
    out: dict[str, Any] = {"stage_seconds": time.perf_counter() - started, **record}
    if stage == "ppo":
        steps = [json.loads(line) for line in (Path(spec["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
        out["response_length"] = statistics.mean(s["response/length"] for s in steps)
        out["eos_rate"] = statistics.mean(s["response/eos_rate"] for s in steps)
        out["step_seconds"] = [s["time/generate"] + s["time/score"] + s["time/update"] for s in steps]
        out["phase_seconds"] = {k: sum(s[f"time/{k}"] for s in steps) for k in ("generate", "score", "update")}
        out["response_width"] = statistics.mean(widths)
    out["metrics"] = result.numbers()
    return out


def trl_lora(spec: dict[str, Any]) -> Any:
    """The LoRA the TRL side trains: the spec's rank and alpha on every linear layer, no dropout."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def worker_trl_ppo(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL 1.12.0's PPOTrainer with a LoRA policy, on the settings the spec shares with our run."""
    _set_threads(spec)
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == TRL_VERSION, trl.__version__
    from trl.experimental.ppo import ppo_trainer

    record: dict[str, float] = {}
    _timed(PPOTrainer, "train", record)
    widths = _record_widths(ppo_trainer, "batch_generation", lambda out: out[1].shape[1])  # B x R x V scores
    started = time.perf_counter()
    path = spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # TRL's collator pads prompts for generation
    torch.manual_seed(spec["seed"])
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    for model in (policy, value, reward):
        model.config.pad_token_id = tokenizer.pad_token_id
    prompts = json.loads(Path(spec["prompts_path"]).read_text())
    train = Dataset.from_dict({"input_ids": prompts})
    rollout, mini = spec["rollout_batch_size"], spec["mini_batch_size"]
    config = PPOConfig(
        output_dir=spec["output_dir"],
        # one rollout of `rollout` episodes per iteration, `rollout // mini` optimizer steps per PPO epoch:
        # TRL's local_batch_size = per_device_train_batch_size * gradient_accumulation_steps, and its
        # minibatch = local_batch_size / num_mini_batches (one micro batch each, as ours without micro_batch_size)
        per_device_train_batch_size=rollout,
        gradient_accumulation_steps=1,
        num_mini_batches=rollout // mini,
        num_ppo_epochs=spec["ppo_epochs"],
        total_episodes=rollout * spec["steps"],
        local_rollout_forward_batch_size=spec["forward_batch_size"],
        response_length=spec["max_new_tokens"],
        temperature=spec["temperature"],
        stop_token="eos",
        missing_eos_penalty=spec["missing_eos_penalty"],
        kl_coef=spec["kl_coef"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        num_sample_generations=0,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
    )
    lora = trl_lora(spec)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=train,
        value_model=value,
        eval_dataset=train.select(range(min(8, len(train)))),
        peft_config=lora,
    )
    load_seconds = time.perf_counter() - started
    trainer.train()
    logs = [h for h in trainer.state.log_history if "episode" in h]
    return {
        "load_seconds": load_seconds,
        **record,
        "episodes": int(logs[-1]["episode"]) if logs else None,
        "response_width": statistics.mean(widths) if widths else None,
        "eos_tokens_per_step": statistics.mean(h["val/num_eos_tokens"] for h in logs) if logs else None,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prompts": worker_prepare_prompts,
    "build-model": worker_build_model,
    "sft-data": worker_sft_data,
    "ours": worker_ours_stage,
    "trl": worker_trl_ppo,
}


def worker_main(kind: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[kind](spec)
    result["rss_end_mib"] = _vm_hwm_mib()
    Path(spec["result_path"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------
# The TRL environment


def ensure_trl_venv(venv: Path) -> str:
    """Create (once) a virtual environment with TRL 1.12.0 and our exact torch/transformers/peft/... versions."""
    from importlib.metadata import version

    python = venv / "bin" / "python"
    # without the local label (2.13.0+cpu -> 2.13.0): pip finds the CPU build by its public version
    pins = [f"{name}=={version(name).split('+')[0]}" for name in SHARED_PACKAGES]
    marker = venv / "bench-pins.txt"
    wanted = "\n".join([f"trl=={TRL_VERSION}", *pins])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python)
    print(f"creating TRL {TRL_VERSION} environment in {venv} ({', '.join(pins)}) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # torch pinned exactly: a looser spec pulls a multi-GB CUDA build on CPU machines
    subprocess.run([*pip, f"trl=={TRL_VERSION}", *pins], check=True)
    marker.write_text(wanted)
    return str(python)


def _package_versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {[*SHARED_PACKAGES, 'trl']!r}}}))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# ----------------------------------------------------------------------------------------------
# The two parts


def _ours_ppo_argv(args: argparse.Namespace, model: str, reward_dir: Path, out: Path, **sizes: Any) -> list[str]:
    """Our PPO stage's command line: the tiny recipe's algorithm, with the benchmark's sizes."""
    options = {
        "config": str(REPO / "recipes" / "tiny" / "ppo.yaml"),
        "model_name_or_path": model,
        "reward_model_path": str(reward_dir),
        "output_dir": str(out),
        "quantization": "none",
        "dtype": "float32",
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "missing_eos_penalty": args.missing_eos_penalty,
        "temperature": args.temperature,
        "seed": args.seed,
        "eval_max_prompts": 0,
        "gold_judge": "",
        "save_steps": 10_000,
        "disable_tqdm": "true",
        **sizes,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def _reward_argv(args: argparse.Namespace, model: str, out: Path, batch: int, max_length: int) -> list[str]:
    """A reward run of a couple of steps: PPO needs one trained on its base; its weights do not affect speed."""
    options = {
        "config": str(REPO / "recipes" / "tiny" / "reward.yaml"),
        "model_name_or_path": model,
        "output_dir": str(out),
        "quantization": "none",
        "dtype": "float32",
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "max_steps": 2,
        "max_train_samples": 4 * batch,
        "max_eval_samples": batch,  # the stage scores its held-out pairs at the end: keep that short
        "per_device_train_batch_size": batch,
        "max_length": max_length,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": "true",
        "report_to": "none",
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def _trl_spec(args: argparse.Namespace, model: str, prompts: Path, out: Path, **sizes: Any) -> dict[str, Any]:
    return {
        "model": model,
        "prompts_path": str(prompts),
        "output_dir": str(out),
        "threads": args.threads,
        "seed": args.seed,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "temperature": args.temperature,
        "missing_eos_penalty": args.missing_eos_penalty,
        **sizes,
    }


def speed_part(args: argparse.Namespace, workdir: Path, trl_python: str) -> dict[str, Any]:
    """Episodes/s and peak RSS of our PPO and TRL's on the tiny model, alternating, median of repeats."""
    tiny = str(REPO / "rlhf" / "tiny" / "model")  # what builtin:tiny resolves to (rlhf/models.py)
    prompts_path = workdir / "prompts.json"
    prompt_stats = run_worker(
        sys.executable,
        "prompts",
        {"model": tiny, "prompts_path": str(prompts_path), "threads": args.threads},
        workdir,
        "prompts",
    )
    reward_dir = workdir / "tiny-reward"
    run_worker(
        sys.executable,
        "ours",
        {"stage": "reward", "argv": _reward_argv(args, tiny, reward_dir, 16, 128), "threads": args.threads},
        workdir,
        "tiny-reward",
    )
    sizes = {
        "steps": args.steps,
        "rollout_batch_size": args.rollout_batch_size,
        "mini_batch_size": args.mini_batch_size,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
        "forward_batch_size": args.forward_batch_size,
    }
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
            out = workdir / f"speed-{side}-{repeat}"
            print(f"  speed: {side} run {repeat + 1}/{args.repeats} ...", flush=True)
            if side == "ours":
                spec = {
                    "stage": "ppo",
                    "argv": _ours_ppo_argv(args, tiny, reward_dir, out, **sizes),
                    "output_dir": str(out),
                    "threads": args.threads,
                }
                result = run_worker(sys.executable, "ours", spec, workdir, f"speed-ours-{repeat}")
            else:
                result = run_worker(
                    trl_python, "trl", _trl_spec(args, tiny, prompts_path, out, **sizes), workdir, f"speed-trl-{repeat}"
                )
            result["episodes_per_second"] = args.steps * args.rollout_batch_size / result["train_seconds"]
            runs[side].append(result)
            print(
                f"    {result['episodes_per_second']:.2f} episodes/s, peak RSS {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    summary = {
        side: {
            "episodes_per_second": median(side, "episodes_per_second"),
            "train_seconds": median(side, "train_seconds"),
            "peak_rss_mib": median(side, "peak_rss_mib"),
            "rss_before_train_mib": median(side, "rss_before_train_mib"),
            "response_width": median(side, "response_width"),
        }
        for side in runs
    }
    summary["ratio"] = {
        "throughput_ours_over_trl": summary["ours"]["episodes_per_second"] / summary["trl"]["episodes_per_second"],
        "peak_rss_ours_over_trl": summary["ours"]["peak_rss_mib"] / summary["trl"]["peak_rss_mib"],
    }
    return {"settings": {**sizes, "threads": args.threads}, "prompts": prompt_stats, "summary": summary, "runs": runs}


def memory_part(args: argparse.Namespace, workdir: Path, trl_python: str | None) -> dict[str, Any]:
    """Peak RSS of our SFT and PPO stages (and TRL's PPO) on a random-weight model of a real shape."""
    model_dir = workdir / f"random-{args.memory_model}"
    print(f"  memory: building a random-weight {args.memory_model} ...", flush=True)
    built = run_worker(
        sys.executable,
        "build-model",
        {"architecture": ARCHITECTURES[args.memory_model], "path": str(model_dir), "threads": args.threads},
        workdir,
        "build-model",
    )
    prompts_path = workdir / "memory-prompts.json"
    prompt_stats = run_worker(
        sys.executable,
        "prompts",
        {"model": str(model_dir), "prompts_path": str(prompts_path), "threads": args.threads},
        workdir,
        "memory-prompts",
    )
    batch, new_tokens = args.memory_batch_size, args.memory_new_tokens
    # A random model almost never samples EOS, so every PPO sequence is prompt + new_tokens long; the
    # rollout's width is the longest prompt of the batch. SFT rows get the median prompt + new_tokens.
    seq_len = prompt_stats["median"] + new_tokens
    data_path = workdir / "sft-text.jsonl"
    run_worker(
        sys.executable, "sft-data", {"path": str(data_path), "rows": 64, "threads": args.threads}, workdir, "sft-data"
    )
    reward_dir = workdir / "memory-reward"
    print("  memory: reward run (2 steps, PPO needs one on its base) ...", flush=True)
    run_worker(
        sys.executable,
        "ours",
        {"stage": "reward", "argv": _reward_argv(args, str(model_dir), reward_dir, 2, 128), "threads": args.threads},
        workdir,
        "memory-reward",
    )
    sft_argv = {
        "config": str(REPO / "recipes" / "tiny" / "sft.yaml"),
        "model_name_or_path": str(model_dir),
        "dataset_name": str(data_path),
        "output_dir": str(workdir / "memory-sft"),
        "quantization": "none",
        "dtype": "float32",
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "max_length": seq_len,
        "overlong": "truncate",
        "assistant_only_loss": "false",
        "eval_split_size": 0,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.memory_sft_steps,
        "eval_strategy": "no",
        "eval_on_start": "false",
        "save_strategy": "no",
        "merge_adapter": "false",
        "optim": "adamw_torch",
        "logging_steps": 1,
        "disable_tqdm": "true",
        "report_to": "none",
    }
    print("  memory: our SFT stage ...", flush=True)
    sft = run_worker(
        sys.executable,
        "ours",
        {"stage": "sft", "argv": [i for k, v in sft_argv.items() for i in (f"--{k}", str(v))], "threads": args.threads},
        workdir,
        "memory-sft",
    )
    sizes = {
        "steps": args.memory_ppo_steps,
        "rollout_batch_size": batch,
        "mini_batch_size": batch,
        "ppo_epochs": args.memory_ppo_epochs,
        "max_new_tokens": new_tokens,
        "forward_batch_size": batch,
    }
    print("  memory: our PPO stage ...", flush=True)
    ppo_out = workdir / "memory-ppo"
    ppo = run_worker(
        sys.executable,
        "ours",
        {
            "stage": "ppo",
            "argv": _ours_ppo_argv(args, str(model_dir), reward_dir, ppo_out, **sizes),
            "output_dir": str(ppo_out),
            "threads": args.threads,
        },
        workdir,
        "memory-ppo",
    )
    offline = {}
    for stage, dataset in (("dpo", "builtin:tiny/pairs"), ("kto", "builtin:tiny/thumbs")):
        print(f"  memory: our {stage.upper()} stage (the reference is the adapter disabled) ...", flush=True)
        options = {
            "config": str(REPO / "recipes" / "tiny" / f"{stage}.yaml"),
            "model_name_or_path": str(model_dir),
            "dataset_name": dataset,
            "output_dir": str(workdir / f"memory-{stage}"),
            "quantization": "none",
            "dtype": "float32",
            "lora_r": args.lora_r,
            "lora_alpha": args.lora_alpha,
            # SFT's tokens per step: a DPO row is two sequences (chosen, rejected) and a KTO row too (the
            # completion and the mismatched one its KL term uses), so half the rows, at SFT's length
            "max_length": seq_len,
            "overlong": "drop",
            "per_device_train_batch_size": max(1, batch // 2),
            "gradient_accumulation_steps": 1,
            "max_steps": args.memory_sft_steps,
            "max_train_samples": 8 * batch,
            "max_eval_samples": max(1, batch // 2),  # the stage's final evaluation: one batch, as training's
            "per_device_eval_batch_size": max(1, batch // 2),
            "eval_strategy": "no",
            "save_strategy": "no",
            "disable_tqdm": "true",
            "report_to": "none",
        }
        argv = [item for key, value in options.items() for item in (f"--{key}", str(value))]
        offline[stage] = run_worker(
            sys.executable, "ours", {"stage": stage, "argv": argv, "threads": args.threads}, workdir, f"memory-{stage}"
        )
    print("  memory: our GRPO (critic-free: no value adapter or head) ...", flush=True)
    grpo_out = workdir / "memory-grpo"
    grpo_argv = _ours_ppo_argv(args, str(model_dir), reward_dir, grpo_out, **sizes)
    grpo_argv += ["--advantage_estimator", "grpo", "--num_generations", "2", "--kl_penalty", "loss"]
    grpo = run_worker(
        sys.executable,
        "ours",
        {"stage": "ppo", "argv": grpo_argv, "output_dir": str(grpo_out), "threads": args.threads},
        workdir,
        "memory-grpo",
    )
    result: dict[str, Any] = {
        "model": args.memory_model,
        "parameters": built["parameters"],
        "settings": {**sizes, "sft_steps": args.memory_sft_steps, "sft_seq_len": seq_len, "threads": args.threads},
        "prompts": prompt_stats,
        "sft": sft,
        "ppo": ppo,
        "grpo": grpo,
        **offline,
        **{f"ratio_{stage}_over_sft": run["peak_rss_mib"] / sft["peak_rss_mib"] for stage, run in offline.items()},
        "ratio_ppo_over_sft": ppo["peak_rss_mib"] / sft["peak_rss_mib"],
        "ratio_grpo_over_sft": grpo["peak_rss_mib"] / sft["peak_rss_mib"],
    }
    if trl_python is not None:
        print("  memory: TRL 1.12 PPO (reference) ...", flush=True)
        trl = run_worker(
            trl_python,
            "trl",
            _trl_spec(args, str(model_dir), prompts_path, workdir / "memory-trl", **sizes),
            workdir,
            "memory-trl",
        )
        result["trl"] = trl
        result["ratio_trl_over_sft"] = trl["peak_rss_mib"] / sft["peak_rss_mib"]
    return result


# ----------------------------------------------------------------------------------------------
# Output


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(r) for r in rows), rule])


def render(report: dict[str, Any]) -> str:
    parts: list[str] = []
    speed = report.get("speed")
    if speed:
        s, summary = speed["settings"], speed["summary"]
        title = (
            f"PPO throughput on builtin:tiny (fp32 + LoRA r{report['settings']['lora_r']}, CPU, "
            f"{s['threads']} threads): "
            f"{s['steps']} iterations x {s['rollout_batch_size']} episodes, minibatch {s['mini_batch_size']}, "
            f"{s['ppo_epochs']} PPO epochs, {s['max_new_tokens']} new tokens; median of {report['settings']['repeats']}"
        )
        rows = []
        for side, name in (("ours", "rlhf (one shared base)"), ("trl", f"TRL {TRL_VERSION} PPOTrainer")):
            r = summary[side]
            runs = ", ".join(f"{x['episodes_per_second']:.2f}" for x in speed["runs"][side])
            rows.append(
                [
                    name,
                    f"{r['episodes_per_second']:.2f}",
                    runs,
                    f"{r['train_seconds']:.1f}",
                    f"{r['response_width']:.1f}",
                    f"{r['rss_before_train_mib']:.0f}",
                    f"{r['peak_rss_mib']:.0f}",
                ]
            )
        ratio = summary["ratio"]
        rows.append(
            [
                "ours / TRL",
                f"{ratio['throughput_ours_over_trl']:.2f}x",
                "",
                "",
                "",
                "",
                f"{ratio['peak_rss_ours_over_trl']:.2f}x",
            ]
        )
        header = [
            "trainer",
            "episodes/s",
            "each run",
            "train s",
            "rollout width",
            "RSS at train start MiB",
            "peak RSS MiB",
        ]
        parts.append(_table(title, header, rows))
    memory = report.get("memory")
    if memory:
        s = memory["settings"]
        title = (
            f"Peak memory on a random-weight {memory['model']} ({memory['parameters'] / 1e6:.0f}M parameters, fp32 + "
            f"LoRA r{report['settings']['lora_r']}, CPU): batch {s['rollout_batch_size']}, SFT rows of "
            f"{s['sft_seq_len']} tokens, PPO prompts {memory['prompts']['min']}-{memory['prompts']['max']} tokens + "
            f"{s['max_new_tokens']} new"
        )
        episodes = s["steps"] * s["rollout_batch_size"]
        stages = [(f"rlhf sft ({s['sft_steps']} steps)", memory["sft"], 1.0, None)]
        for offline in ("dpo", "kto"):
            if offline in memory:
                name = f"rlhf {offline} ({s['sft_steps']} steps, half the rows: 2 sequences each)"
                stages.append((name, memory[offline], memory[f"ratio_{offline}_over_sft"], None))
        stages.append(
            (
                f"rlhf ppo ({s['steps']} iterations, {s['ppo_epochs']} epochs)",
                memory["ppo"],
                memory["ratio_ppo_over_sft"],
                episodes,
            )
        )
        if "grpo" in memory:
            stages.append(
                (
                    f"rlhf ppo, GRPO (groups of 2, KL loss; {s['steps']} iterations)",
                    memory["grpo"],
                    memory["ratio_grpo_over_sft"],
                    episodes,
                )
            )
        if "trl" in memory:
            stages.append(
                (f"TRL {TRL_VERSION} PPO (same settings)", memory["trl"], memory["ratio_trl_over_sft"], episodes)
            )
        rows = [
            [
                name,
                f"{run['rss_before_train_mib']:.0f}",
                f"{run['peak_rss_mib']:.0f}",
                f"{ratio:.2f}x",
                f"{run['train_seconds']:.1f}",
                f"{n / run['train_seconds']:.3f}" if n else "",
            ]
            for name, run, ratio, n in stages
        ]
        header = ["stage", "RSS at train start MiB", "peak RSS MiB", "peak / SFT peak", "train s", "episodes/s"]
        parts.append(_table(title, header, rows))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_ppo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/ppo.json", help="JSON file for the results.")
    parser.add_argument("--render", metavar="JSON", default=None, help="Only print the tables of an earlier --out.")
    parser.add_argument("--workdir", default=None, help="Scratch folder (default: a fresh temp folder, removed).")
    parser.add_argument(
        "--trl-venv",
        default=str(Path.home() / ".cache" / "rlhf-bench" / f"trl-{TRL_VERSION}"),
        help="Virtual environment of TRL 1.12.0 (created on first use, reused after).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of both sides.")
    parser.add_argument("--skip-speed", action="store_true", help="Skip the throughput comparison with TRL.")
    parser.add_argument("--skip-memory", action="store_true", help="Skip the PPO/SFT memory comparison.")
    parser.add_argument("--skip-trl-memory", action="store_true", help="Do not run TRL on the memory model.")
    # the algorithm: the tiny recipe's values (recipes/tiny/ppo.yaml), shared by both sides
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank of every adapter (policy, reward, value).")
    parser.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha of every adapter.")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="Policy (and value) learning rate.")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="KL penalty coefficient (fixed).")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0, help="Score penalty without EOS.")
    speed = parser.add_argument_group("speed (tiny model)")
    speed.add_argument("--repeats", type=int, default=5, help="Runs per side; the median is reported.")
    speed.add_argument("--steps", type=int, default=4, help="PPO iterations per run.")
    speed.add_argument("--rollout-batch-size", type=int, default=64, help="Episodes per iteration.")
    speed.add_argument("--mini-batch-size", type=int, default=16, help="Episodes per optimizer step.")
    speed.add_argument("--ppo-epochs", type=int, default=2, help="Passes over each rollout.")
    speed.add_argument("--max-new-tokens", type=int, default=40, help="Response length cap.")
    speed.add_argument("--forward-batch-size", type=int, default=64, help="No-grad forward chunk, both sides.")
    memory = parser.add_argument_group("memory (random-weight model of a real shape)")
    memory.add_argument("--memory-model", choices=sorted(ARCHITECTURES), default="qwen2.5-0.5b")
    memory.add_argument(
        "--memory-batch-size", type=int, default=4, help="SFT batch = PPO rollout batch = PPO minibatch."
    )
    memory.add_argument(
        "--memory-new-tokens", type=int, default=32, help="PPO response length (SFT rows: median prompt + this)."
    )
    memory.add_argument("--memory-sft-steps", type=int, default=3, help="SFT optimizer steps.")
    memory.add_argument("--memory-ppo-steps", type=int, default=2, help="PPO iterations (ours and TRL's).")
    memory.add_argument("--memory-ppo-epochs", type=int, default=1, help="PPO epochs per iteration.")
    args = parser.parse_args(argv)
    if args.rollout_batch_size % args.mini_batch_size:
        parser.error("--rollout-batch-size must be a multiple of --mini-batch-size")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        print(render(report))
        return report
    started = time.perf_counter()
    trl_python = None
    if not args.skip_speed or not args.skip_trl_memory:
        trl_python = ensure_trl_venv(Path(args.trl_venv).expanduser())
    report: dict[str, Any] = {
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"ours": _package_versions(sys.executable)},
    }
    if trl_python is not None:
        theirs = report["versions"]["trl_venv"] = _package_versions(trl_python)
        ours = report["versions"]["ours"]
        differ = [n for n in SHARED_PACKAGES if ours[n].split("+")[0] != theirs[n].split("+")[0]]
        if differ:  # the comparison would then measure library versions as well as the trainers
            print(f"WARNING: the TRL environment has other versions of {differ}: {theirs}", flush=True)
        report["versions"]["shared_versions_match"] = not differ
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_speed:
            print("speed: our PPO vs TRL 1.12 on builtin:tiny", flush=True)
            assert trl_python is not None
            report["speed"] = speed_part(args, workdir, trl_python)
        if not args.skip_memory:
            print(f"memory: PPO vs SFT stage on a random-weight {args.memory_model}", flush=True)
            report["memory"] = memory_part(args, workdir, None if args.skip_trl_memory else trl_python)
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(render(report))
    print(f"\n{report['seconds'] / 60:.1f} minutes; results in {out}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
