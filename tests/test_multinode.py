"""Two machines as two launchers: `rlhf ppo --fsdp full_shard` over a c10d rendezvous equals one launcher's run.

Two `torchrun --nnodes 2 --nproc_per_node 1` launchers on this machine meet at 127.0.0.1 as two machines
would at HOST:PORT (docs/scaling.md); only the network between them is missing. One CPU process each (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ppo_args, torchrun
from safetensors.torch import load_file

LOSSES = ("loss/policy_loss", "loss/value_loss", "objective/score", "objective/kl", "policy/approx_kl")
OVERRIDES = ("--steps", "2", "--rollout_batch_size", "4", "--mini_batch_size", "4", "--eval_max_prompts", "0")


def _history(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _node(port: int, *args: str) -> subprocess.Popen[str]:
    """One machine's launcher: one process, joining the job at the rendezvous on 127.0.0.1:port."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "rlhf-test"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "-m", "rlhf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_two_launchers_equal_one_launcher_of_two_processes(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """The same 2-process sharded job, started as two machines and as one: the same losses and adapter weights.

    Both are 2 ranks of one process group; which launcher starts a rank changes nothing it computes, so the
    tolerance is float32 rounding (measured: equal).
    """
    one, two = tmp_path / "one-launcher", tmp_path / "two-launchers"
    single = torchrun(29581, "ppo", *ppo_args(one, tiny_sft_run, tiny_reward_run, *OVERRIDES, "--fsdp", "full_shard"))
    assert single.returncode == 0, single.stderr[-3000:]
    args = ppo_args(two, tiny_sft_run, tiny_reward_run, *OVERRIDES, "--fsdp", "full_shard")
    nodes = [_node(29582, "ppo", *args) for _ in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-3000:]

    a, b = _history(two), _history(one)
    assert [h["step"] for h in a] == [1, 2]
    for x, y in zip(a, b, strict=True):
        for key in LOSSES:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-8), (x["step"], key)
        assert x["fsdp/param_share"] == pytest.approx(0.5, abs=0.05)  # sharded across the two launchers' processes
    for adapter in ("adapter_model.safetensors", "value/adapter_model.safetensors"):
        x, y = load_file(two / adapter), load_file(one / adapter)
        assert x.keys() == y.keys()
        assert max(float((x[k] - y[k]).abs().max()) for k in x) <= 1e-6, adapter
