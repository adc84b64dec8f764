"""`rlhf ppo --fsdp full_shard`: the one 4-bit base, its adapters and heads sharded with FSDP2 on 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TORCHRUN_ENV, ppo_args, torchrun, torchrun_command
from peft import PeftModel
from safetensors.torch import load_file

from rlhf import models
from rlhf.arguments import ModelArguments
from rlhf.config import parse
from rlhf.stages import ppo
from rlhf_core.errors import ConfigError

LOSSES = ("loss/policy_loss", "loss/value_loss", "objective/score", "objective/kl", "policy/approx_kl")
# GRPO as TRL runs it (KL as a loss term, no critic); 2 groups of 4 answers per process, packed, in 2 minibatches
GRPO = ("--advantage_estimator", "grpo", "--kl_penalty", "loss", "--rollout_batch_size", "8")
SMALL = ("--steps", "2", "--rollout_batch_size", "4", "--mini_batch_size", "4", "--eval_max_prompts", "0")


def _history(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two safetensors files of the same tensors."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "port"), [((), 29551), (GRPO, 29571)], ids=["gae", "grpo"])
def test_sharded_run_equals_the_data_parallel_run(
    algorithm: tuple[str, ...], port: int, tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """Two iterations of PPO (GAE) or GRPO on the same global batch, sharded and unsharded, on 2 processes each.

    The reference is the data-parallel run (every process holds the whole model and averages its
    gradients by hand): the same prompts, the same sampling draws and minibatches on each process,
    so the only difference is where the weights live. One process would sample the same 8 prompts
    in one batch from one random stream and so draw other answers; that the data-parallel run is
    the single-process update of its global batch is what its gradient averaging does. GRPO has no
    critic, measures its groups packed (one row per prompt and its answers) and shuffles groups into
    minibatches, so it steps the optimizer twice an iteration. Tolerance: 1e-5 relative on the losses
    and 1e-5 absolute on the adapter weights (float32; FSDP averages gradients by reduce-scatter, the
    reference by all-reduce, so sums could round differently; measured: equal to the last bit).
    """
    runs = {}
    # the sharded run leaves rollout_engine at auto, which must pick generate() (no merged copy of a sharded
    # base); the replicated run would pick the merged engine (other draws), so it names generate()'s
    replicated = ["--rollout_engine", "transformers"]
    for name, extra, at in (("sharded", ["--fsdp", "full_shard"], port), ("replicated", replicated, port + 1)):
        runs[name] = tmp_path / name
        args = ppo_args(runs[name], tiny_sft_run, tiny_reward_run, *SMALL, *algorithm, *extra)
        result = torchrun(at, "ppo", *args)
        assert result.returncode == 0, result.stderr[-3000:]
    sharded, replicated = _history(runs["sharded"]), _history(runs["replicated"])
    assert [h["step"] for h in sharded] == [1, 2]
    for a, b in zip(sharded, replicated, strict=True):
        assert a.keys() - {"fsdp/param_share", "fsdp/optimizer_state_share"} == b.keys()
        assert ("loss/value_loss" in a) == (not algorithm)
        assert a["policy/optimizer_steps"] / a["policy/update_epochs"] == (2 if algorithm else 1)  # minibatches
        for key in (*LOSSES, "policy/kl_loss", "reward/group_std", "policy/optimizer_steps"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
        # each process holds half of the sharded weights and of Adam's moments (printed in metrics.jsonl)
        assert a["fsdp/param_share"] == pytest.approx(0.5, abs=0.05)
        assert a["fsdp/optimizer_state_share"] == pytest.approx(0.5, abs=0.05)
    # exactly one policy adapter at the top (and, with a critic, its adapter and head under value/; the final
    # checkpoint holds its own copies), each gathered whole and equal to the unsharded run's
    folder = runs["sharded"]
    adapters = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    critic = [
        "checkpoint-2/value/adapter_model.safetensors",
        "checkpoint-2/value_head.safetensors",
        "value/adapter_model.safetensors",
        "value/value_head.safetensors",
    ]
    policy = ["adapter_model.safetensors", "checkpoint-2/policy/adapter_model.safetensors"]
    assert adapters == sorted(policy + ([] if algorithm else critic))
    for adapter in adapters:
        assert _max_difference(runs["sharded"] / adapter, runs["replicated"] / adapter) <= 1e-5, adapter
    assert any(float(v.abs().max()) > 0 for k, v in load_file(runs["sharded"] / adapters[0]).items() if "lora_B" in k)
    if algorithm:
        return
    # plain PEFT loads it onto the base it was trained on
    args = ModelArguments(model_name_or_path=str(tiny_sft_run / "merged"), quantization="4bit")
    tokenizer = models.load_tokenizer(args)
    policy_model = PeftModel.from_pretrained(models.load_causal_lm(args, tokenizer), str(runs["sharded"]))
    batch = tokenizer("3 plus 4", return_tensors="pt")
    with torch.no_grad():
        trained = policy_model(**batch).logits
        with policy_model.disable_adapter():
            assert (trained - policy_model(**batch).logits).abs().max() > 1e-4  # the adapter is in effect


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: /proc's children lists), children before their own."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [d for c in children for d in (c, *_descendants(c))]


def _state(pid: int) -> str:
    """A process's state letter (Z: a zombie, dead but not yet waited for), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


@pytest.mark.slow
def test_sharded_run_killed_and_resumed_equals_an_unkilled_one(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """A sharded PPO run SIGKILLed after its first checkpoint and resumed ends as one that was never stopped.

    The checkpoint holds the gathered adapters, value head and Adam's state, the LR schedule (linear
    decay: a schedule restarted from its first value would change ``lr`` and every later loss), the
    KL controller and each process's random state; ``--resume`` scatters them back onto the shards.
    torchrun and both workers are killed, as a lost machine would be.
    """
    common = [*SMALL, "--fsdp", "full_shard", "--steps", "4", "--save_steps", "2", "--lr_scheduler_type", "linear"]
    common += ["--adaptive_kl_target", "0.5"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = torchrun(29573, "ppo", *ppo_args(straight, tiny_sft_run, tiny_reward_run, *common))
    assert result.returncode == 0, result.stderr[-3000:]

    command = torchrun_command(29574, "ppo", *ppo_args(killed, tiny_sft_run, tiny_reward_run, *common))
    process = subprocess.Popen(command, env=TORCHRUN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-2").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    # torchrun and both workers (which torchrun starts in sessions of their own, so a signal to its group
    # would leave them running): found before any dies, then all killed at once
    workers = _descendants(process.pid)
    assert len(workers) >= 2
    for pid in (process.pid, *workers):
        os.kill(pid, signal.SIGKILL)
    process.wait()
    while any(_state(pid) not in ("", "Z") for pid in workers):  # dead: gone, or a zombie not yet reaped
        time.sleep(0.05)
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()  # killed mid-run
    result = torchrun(29575, "ppo", *ppo_args(killed, tiny_sft_run, tiny_reward_run, *common, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = _history(straight), _history(killed)
    assert [h["step"] for h in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in (*LOSSES, "lr", "objective/kl_coef", "value/explained_variance"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)
    for adapter in ("adapter_model.safetensors", "value/adapter_model.safetensors", "value/value_head.safetensors"):
        assert _max_difference(straight / adapter, killed / adapter) <= 1e-6, adapter


def _build(out: Path, sft_run: Path, reward_run: Path, *overrides: str) -> Any:
    return ppo.build(*parse(ppo.CONFIG_TYPES, ppo_args(out, sft_run, reward_run, *overrides), prog="t", description=""))


def test_sharding_options_it_cannot_run_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any model, reward run or process group is touched (the run folders need not exist)."""
    sft_run, reward_run = tmp_path / "sft", tmp_path / "reward"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"^fsdp: sharding needs 2 or more processes \(torchrun"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "full_shard")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: the checks below come before any process group
    with pytest.raises(ConfigError, match=r"^fsdp: quantization 8bit cannot be sharded"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "full_shard", "--quantization", "8bit")
    with pytest.raises(ConfigError, match=r"^fsdp: an adapter on lm_head \(lora_target_modules"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "full_shard", "--lora_target_modules", "lm_head")
    with pytest.raises(ConfigError, match=r"^fsdp: 'hybrid_shard' is not supported by the RL stage"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "hybrid_shard")
    with pytest.raises(ConfigError, match=r"^fsdp: optim paged_adamw_8bit does not step sharded parameters"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "full_shard auto_wrap", "--optim", "paged_adamw_8bit")
    with pytest.raises(ConfigError, match=r"^fsdp: rollout_engine merged needs the whole base in each process"):
        _build(tmp_path, sft_run, reward_run, "--fsdp", "full_shard", "--rollout_engine", "merged")
