"""sft, reward and ppo on the tiny model in bf16 on CPU, as a GPU runs them: dtype errors show here, not there.

A GPU run is bf16 throughout (bf16 weights, 4-bit layers computing in bf16, autocast), the rest of the suite
fp32. On CPU, transformers' Trainer takes bf16 with ``use_cpu`` (CPU autocast) and our PPO trainer autocasts
itself, so the same code paths run; the runs are two steps each, on a few rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, run_cli

BF16 = ("--bf16", "true", "--disable_tqdm", "true")
TRAINER = ("--use_cpu", "true", "--max_steps", "2", "--logging_steps", "1", "--eval_strategy", "no")
TRAINER += ("--save_strategy", "no", "--per_device_train_batch_size", "4", "--max_train_samples", "8")


def _resolved(run: Path) -> dict[str, object]:
    config: dict[str, object] = yaml.safe_load((run / "rlhf_config.yaml").read_text())
    return config


def _finite_losses(run: Path) -> list[float]:
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(math.isfinite(loss) for loss in losses), history
    return losses


@pytest.mark.slow
def test_sft_reward_and_ppo_run_in_bf16_on_cpu(tmp_path: Path) -> None:
    sft, reward, ppo = tmp_path / "sft", tmp_path / "reward", tmp_path / "ppo"
    run_cli(
        "sft",
        "--config",
        str(RECIPES / "tiny" / "sft.yaml"),
        "--output_dir",
        str(sft),
        *BF16,
        *TRAINER,
        "--eval_on_start",
        "false",
        "--max_eval_samples",
        "4",
    )
    config = _resolved(sft)
    assert config["dtype"] == config["bnb_4bit_compute_dtype"] == "bfloat16" and config["bf16"] is True
    _finite_losses(sft)
    merge = json.loads((sft / "merged" / "merge.json").read_text())["check"]  # the merge, checked in bf16 too
    assert merge["argmax_agreement"] > 0.99 and merge["kl_vs_trained"] < 1e-2

    run_cli(
        "reward",
        "--config",
        str(RECIPES / "tiny" / "reward.yaml"),
        "--model_name_or_path",
        str(sft / "merged"),
        "--output_dir",
        str(reward),
        *BF16,
        *TRAINER,
        "--max_eval_samples",
        "4",
    )
    assert _resolved(reward)["bnb_4bit_compute_dtype"] == "bfloat16"
    _finite_losses(reward)
    scores = [json.loads(line) for line in (reward / "eval_scores.jsonl").read_text().splitlines()]
    assert scores and all(math.isfinite(v) for row in scores for v in row.values() if isinstance(v, float))

    run_cli(
        "ppo",
        "--config",
        str(RECIPES / "tiny" / "ppo.yaml"),
        "--model_name_or_path",
        str(sft / "merged"),
        "--reward_model_path",
        str(reward),
        "--output_dir",
        str(ppo),
        *BF16,
        "--steps",
        "2",
        "--rollout_batch_size",
        "4",
        "--mini_batch_size",
        "2",
        "--ppo_epochs",
        "1",
        "--max_new_tokens",
        "8",
        "--eval_max_prompts",
        "0",
    )
    assert _resolved(ppo)["bf16"] is True and _resolved(ppo)["dtype"] == "bfloat16"
    steps = [json.loads(line) for line in (ppo / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    for key in ("objective/score", "loss/policy_loss", "loss/value_loss", "objective/kl", "policy/entropy"):
        assert all(math.isfinite(step[key]) for step in steps), key
