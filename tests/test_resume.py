"""`--resume` of the TRL-based stages: a run stopped at a checkpoint and resumed equals one never stopped.

Each stage trains 6 optimizer steps and saves at step 3; a second run folder gets only that
checkpoint (what a run killed after step 3 leaves) and is resumed. The resumed run must take only the
3 remaining steps and end with the same adapter (and, for the reward model, score head) as the
uninterrupted run: weights, optimizer moments, LR schedule, data order and dropout's RNG restored.
Training from scratch on `--resume` takes 6 steps; restoring the weights but not Adam's moments (or
the RNG) ends elsewhere: both fail here. PPO's own resume is tested in test_ppo.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES
from safetensors.torch import load_file
from transformers import Trainer

from rlhf.arguments import StageConfig
from rlhf.config import parse
from rlhf.stages import dpo, kto, reward, sft

STAGES = {"sft": sft, "reward": reward, "dpo": dpo, "kto": kto}


def _run(stage: str, out: Path, model: Path | None, *extra: str) -> None:
    module = STAGES[stage]
    argv = ["--config", str(RECIPES / "tiny" / f"{stage}.yaml"), "--output_dir", str(out)]
    argv += ["--max_steps", "6", "--save_steps", "3", "--eval_strategy", "no", "--disable_tqdm", "true"]
    argv += ["--logging_steps", "1", "--per_device_train_batch_size", "8", "--max_train_samples", "64"]
    if model is not None:
        argv += ["--model_name_or_path", str(model)]
    if stage == "sft":
        argv += ["--merge_adapter", "false", "--eval_on_start", "false"]
    module.run(StageConfig(*parse(module.CONFIG_TYPES, [*argv, *extra], prog="t", description="")))


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_resumed_run_equals_one_never_stopped(
    stage: str, tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = None if stage == "sft" else tiny_sft_run / "merged"
    steps: list[int] = []
    original = Trainer.training_step

    def counting(self: Trainer, *args: Any, **kwargs: Any) -> torch.Tensor:
        steps.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", counting)

    whole = tmp_path / "whole"
    _run(stage, whole, model)
    assert steps == [0, 1, 2, 3, 4, 5]  # one micro-batch per step, counted from 0

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copytree(whole / "checkpoint-3", stopped / "checkpoint-3")
    steps.clear()
    _run(stage, stopped, model, "--resume")
    assert steps == [3, 4, 5]  # only what the checkpoint had not done

    expected = load_file(str(whole / "adapter_model.safetensors"))
    resumed = load_file(str(stopped / "adapter_model.safetensors"))
    assert expected.keys() == resumed.keys()
    at_checkpoint = load_file(str(whole / "checkpoint-3" / "adapter_model.safetensors"))
    assert any(not torch.equal(at_checkpoint[k], expected[k]) for k in expected)  # steps 4-6 moved the weights
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6, rtol=0), name
