"""Two processes (torchrun, gloo on CPU) train one SFT adapter; the main process saves it once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RECIPES, torchrun

from rlhf.results import SFTResult


@pytest.mark.slow
def test_sft_under_torchrun_with_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = torchrun(
        29531,
        "sft",
        "--config",
        str(RECIPES / "tiny" / "sft.yaml"),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--eval_strategy",
        "no",
        "--save_steps",
        "3",
        "--merge_adapter",
        "false",
        "--disable_tqdm",
        "true",
        "--ddp_backend",
        "gloo",
        "--dataloader_num_workers",
        "0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = SFTResult.read(out)
    assert result.world_size == 2
    assert result.global_steps == 6
    # one final adapter, written by the main process (checkpoints hold their own copies)
    adapters = sorted(str(p.relative_to(out)) for p in out.rglob("adapter_model.safetensors"))
    assert adapters == [
        "adapter_model.safetensors",
        "checkpoint-3/adapter_model.safetensors",
        "checkpoint-6/adapter_model.safetensors",
    ]
