"""Every real recipe runs: two steps each, with the model and data swapped for the tiny ones (QLoRA path on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RECIPES, run_cli

from rlhf.results import PPOResult

REAL = sorted(p for p in RECIPES.iterdir() if p.is_dir() and p.name != "tiny")
SWAP = {
    "sft": ["--dataset_name", "builtin:tiny/sft", "--merge_adapter", "false"],
    "reward": ["--dataset_name", "builtin:tiny/pairs", "--max_eval_samples", "8"],
    "dpo": ["--dataset_name", "builtin:tiny/pairs", "--max_eval_samples", "8"],
    "kto": ["--dataset_name", "builtin:tiny/thumbs", "--max_eval_samples", "8"],
}
# Two micro-batches per step keep gradient accumulation on the path while the 7B recipe's 16 would
# make its two steps cost eight times the others on CPU; every other setting is the recipe's.
ACCUMULATION = ["--gradient_accumulation_steps", "2"]


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "kto"])
@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_real_recipe_runs_two_steps_on_the_tiny_model(recipe: Path, stage: str, tmp_path: Path) -> None:
    run_cli(
        stage,
        "--config",
        str(recipe / f"{stage}.yaml"),
        "--model_name_or_path",
        "builtin:tiny",
        *SWAP[stage],
        *ACCUMULATION,
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "2",
        "--max_train_samples",
        "64",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
    )
    assert (tmp_path / "adapter_model.safetensors").is_file()
    config = (tmp_path / "rlhf_config.yaml").read_text()
    assert "quantization: 4bit" in config  # the recipe's QLoRA path ran, on CPU


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_real_ppo_recipe_runs_two_iterations_on_the_tiny_model(
    recipe: Path, algorithm: str, tmp_path: Path, tiny_sft_run: Path, tiny_reward_run: Path
) -> None:
    run_cli(
        "ppo",
        "--config",
        str(recipe / f"{algorithm}.yaml"),
        "--model_name_or_path",
        str(tiny_sft_run / "merged"),
        "--reward_model_path",
        str(tiny_reward_run),
        "--dataset_name",
        "builtin:tiny/prompts",
        "--output_dir",
        str(tmp_path),
        "--steps",
        "2",
        "--rollout_batch_size",
        "8",
        "--mini_batch_size",
        "4",
        "--micro_batch_size",
        "2",
        "--forward_batch_size",
        "8",
        "--max_new_tokens",
        "12",
        "--eval_max_prompts",
        "4",
        "--disable_tqdm",
        "true",
    )
    config = (tmp_path / "rlhf_config.yaml").read_text()
    assert "quantization: 4bit" in config and "optim: paged_adamw_8bit" in config
    assert PPOResult.read(tmp_path).steps == 2
