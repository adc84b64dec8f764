"""`rlhf ppo --fsdp full_shard`: the one 4-bit base, its adapters and heads sharded with FSDP2 on 2 gloo processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ppo_args, torchrun
from peft import PeftModel
from safetensors.torch import load_file

from rlhf import models
from rlhf.config import ModelArguments, parse
from rlhf.core.errors import ConfigError
from rlhf.stages import ppo

LOSSES = ("loss/policy_loss", "loss/value_loss", "objective/score", "objective/kl", "policy/approx_kl")


def _history(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sharded_ppo_equals_the_data_parallel_run(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    """Two iterations of PPO (GAE) on the same global batch, sharded and unsharded, on 2 processes each.

    The reference is the data-parallel run (every process holds the whole model and averages its
    gradients by hand): the same prompts, the same sampling draws and minibatches on each process,
    so the only difference is where the weights live. One process would sample the same 8 prompts
    in one batch from one random stream and so draw other answers; that the data-parallel run is
    the single-process update of its global batch is what its gradient averaging does. Tolerance:
    1e-5 relative on the losses and 1e-5 absolute on the adapter weights (float32; FSDP averages
    gradients by reduce-scatter, the reference by all-reduce, so sums could round differently;
    measured: equal to the last bit).
    """
    overrides = ["--steps", "2", "--rollout_batch_size", "4", "--mini_batch_size", "4", "--eval_max_prompts", "0"]
    runs = {}
    # the sharded run leaves rollout_engine at auto, which must pick generate() (no merged copy of a sharded
    # base); the replicated run would pick the merged engine (other draws), so it names generate()'s
    replicated = ["--rollout_engine", "transformers"]
    for name, extra, port in (("sharded", ["--fsdp", "full_shard"], 29551), ("replicated", replicated, 29552)):
        runs[name] = tmp_path / name
        result = torchrun(port, "ppo", *ppo_args(runs[name], tiny_sft_run, tiny_reward_run, *overrides, *extra))
        assert result.returncode == 0, result.stderr[-3000:]
    sharded, replicated = _history(runs["sharded"]), _history(runs["replicated"])
    assert [h["step"] for h in sharded] == [1, 2]
    for a, b in zip(sharded, replicated, strict=True):
        for key in LOSSES:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
        # each process holds half of the sharded weights and of Adam's moments (printed in metrics.jsonl)
        assert a["fsdp/param_share"] == pytest.approx(0.5, abs=0.05)
        assert a["fsdp/optimizer_state_share"] == pytest.approx(0.5, abs=0.05)
        assert "fsdp/param_share" not in b
    # exactly one policy adapter at the top (and the critic's under value/; the final checkpoint holds its
    # own copies), each gathered whole and equal to the unsharded run's
    folder = runs["sharded"]
    adapters = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    assert adapters == [
        "adapter_model.safetensors",
        "checkpoint-2/policy/adapter_model.safetensors",
        "checkpoint-2/value/adapter_model.safetensors",
        "checkpoint-2/value_head.safetensors",
        "value/adapter_model.safetensors",
        "value/value_head.safetensors",
    ]
    for adapter in adapters:
        a, b = load_file(runs["sharded"] / adapter), load_file(runs["replicated"] / adapter)
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5, adapter
    assert any(float(v.abs().max()) > 0 for k, v in load_file(runs["sharded"] / adapters[0]).items() if "lora_B" in k)
    # plain PEFT loads it onto the base it was trained on
    args = ModelArguments(model_name_or_path=str(tiny_sft_run / "merged"), quantization="4bit")
    tokenizer = models.load_tokenizer(args)
    policy = PeftModel.from_pretrained(models.load_causal_lm(args, tokenizer), str(runs["sharded"]))
    batch = tokenizer("3 plus 4", return_tensors="pt")
    with torch.no_grad():
        trained = policy(**batch).logits
        with policy.disable_adapter():
            assert (trained - policy(**batch).logits).abs().max() > 1e-4  # the adapter is in effect


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
