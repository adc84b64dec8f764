"""FSDP2 over one base (4-bit NF4 or full precision) with a LoRA: sharded == unsharded, on 2 gloo processes.

One torchrun job (``scripts/fsdp_check.py``) checks every variant; the tests read its lines. Both
copies compute on the same process with the same kernels and FSDP's all-gather moves the weights'
bytes unchanged, so the logits agree to 1e-6 (measured: exactly). Each process sees the same batch,
so FSDP's averaged gradient equals the unsharded one to 1e-6 of its size (measured: exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from rlhf import sharding
from rlhf_core.errors import ConfigError

VARIANTS = ("4bit:uint8", "4bit:float32", "none")
ANSWER = "3 plus 4 is 7.<|im_end|>"  # the tiny model's greedy answer to "What is 3 plus 4?"


def fsdp_check(out: Path, *variants: str, port: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Each process's result of ``scripts/fsdp_check.py``, by (variant, rank)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(ROOT / "scripts" / "fsdp_check.py"), *variants, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for path in sorted(out.glob("rank-*.jsonl")) for line in path.read_text().splitlines()]
    return {(line["variant"], line["rank"]): line for line in lines}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    return fsdp_check(tmp_path_factory.mktemp("fsdp"), *VARIANTS, port=29541)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_model_equals_unsharded(checked: dict[tuple[str, int], dict[str, Any]], variant: str) -> None:
    for rank in (0, 1):
        line = checked[(variant, rank)]
        assert line["reference_answer"] == ANSWER
        assert line["sharded_answer"] == line["reference_answer"]
        assert line["logit_diff"] <= 1e-6
        assert line["grad_scale"] > 1e-3  # the LoRA gets real gradients ...
        assert line["grad_diff"] <= 1e-6 * line["grad_scale"]  # ... and the same ones, sharded
        assert line["weight_diff"] <= 1e-6  # after an AdamW step
        assert line["answer_after_step"]
        assert line["share"] == pytest.approx(0.5, abs=0.05)  # each process holds half of the weights


def test_sharding_needs_two_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"^fsdp: sharding needs 2 or more processes"):
        sharding.check_world()


def test_a_4bit_model_repacked_for_the_cpu_kernel_is_refused(tiny_tokenizer: Any) -> None:
    """bitsandbytes' CPU kernel repacks the weights in place; sharded, those bytes would be read wrongly."""
    import torch
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from rlhf import models
    from rlhf.arguments import ModelArguments

    model = models.load_causal_lm(
        ModelArguments(model_name_or_path="builtin:tiny", quantization="4bit"), tiny_tokenizer
    )
    assert sharding.prepare_quantized(model) == 4 * 7  # q, k, v, o, gate, up, down per layer; the CPU kernel off
    layer = model.model.layers[0].self_attn.q_proj
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    with pytest.raises(ConfigError, match=r"^fsdp: model.layers.0.self_attn.q_proj was repacked"):
        sharding.prepare_quantized(model)
    assert torch.is_tensor(layer.weight)
