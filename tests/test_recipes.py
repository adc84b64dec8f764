"""Every real recipe runs: two steps each, with the model and data swapped for the tiny ones (QLoRA path on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RECIPES, run_cli

from rlhf.config import parse
from rlhf.results import PPOResult
from rlhf.stages import dpo, kto, pipeline_options, ppo, reward, sft

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


TYPES = {"sft": sft, "reward": reward, "ppo": ppo, "grpo": ppo, "dpo": dpo, "kto": kto}
DATASETS = {
    "sft": "trl-lib/Capybara",
    "reward": "trl-lib/ultrafeedback_binarized",
    "ppo": "trl-lib/ultrafeedback-prompt",
    "grpo": "trl-lib/ultrafeedback-prompt",
    "dpo": "trl-lib/ultrafeedback_binarized",
    "kto": "trl-lib/kto-mix-14k",
}


def _options(recipe: Path, stage: str) -> dict[str, object]:
    """A recipe's stage file as the stage parses it: every option (defaults filled in) by name."""
    parsed = parse(TYPES[stage].CONFIG_TYPES, ["--config", str(recipe / f"{stage}.yaml")], prog="t", description="")
    return {name: value for part in parsed for name, value in vars(part).items()}


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_real_recipes_are_the_qlora_setup_and_the_chain_of_folders_the_readme_describes(recipe: Path) -> None:
    """4-bit NF4 with double quantization, LoRA r=16 on every linear layer, paged 8-bit AdamW and gradient
    checkpointing in every training stage; the default hub datasets; each stage writing under
    runs/<recipe>/ where the next one reads (sft/merged, reward); GRPO's 8 answers per prompt; the pipeline
    ranking 4 candidates of 300 UltraFeedback prompts by 2 annotators each."""
    run = Path("runs") / recipe.name
    for stage, dataset in DATASETS.items():
        options = _options(recipe, stage)
        assert (options["quantization"], options["bnb_4bit_quant_type"], options["use_bnb_nested_quant"]) == (
            "4bit",
            "nf4",
            True,
        ), stage
        assert (options["lora_r"], options["lora_target_modules"]) == (16, "all-linear"), stage
        optim = getattr(options["optim"], "value", options["optim"])  # transformers' enum or the stage's string
        assert (optim, options["gradient_checkpointing"]) == ("paged_adamw_8bit", True), stage
        assert options["dataset_name"] == dataset, stage
        assert options["output_dir"] == str(run / stage), stage
        if stage != "sft":
            assert options["model_name_or_path"] == str(run / "sft" / "merged"), stage
        if stage in ("ppo", "grpo"):
            assert options["reward_model_path"] == str(run / "reward"), stage
        if recipe.name == "qwen2.5-7b-instruct" and stage in ("sft", "reward", "dpo"):
            assert (options["per_device_train_batch_size"], options["gradient_accumulation_steps"]) == (1, 16)
        if recipe.name == "qwen2.5-7b-instruct" and stage == "kto":
            assert (options["per_device_train_batch_size"], options["gradient_accumulation_steps"]) == (2, 8)
    assert _options(recipe, "sft")["merge_adapter"] is True
    grpo = _options(recipe, "grpo")
    assert (grpo["advantage_estimator"], grpo["num_generations"]) == ("grpo", 8)
    (config,) = parse(
        pipeline_options.CONFIG_TYPES, ["--config", str(recipe / "pipeline.yaml")], prog="t", description=""
    )
    assert (config.prompts, config.annotation_prompts, config.num_candidates, config.overlap) == (
        "trl-lib/ultrafeedback-prompt",
        300,
        4,
        2,
    )


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
