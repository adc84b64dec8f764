"""Recipes and flags: unknown keys are errors that name them; values are checked; recipes all parse."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES

from rlhf.arguments import RunOptions
from rlhf.config import parse, resolved_dict
from rlhf.stages import dpo, kto, pipeline_options, ppo, reward, sft
from rlhf_core.errors import ConfigError

SFT_TYPES = sft.CONFIG_TYPES
STAGE_TYPES = {
    "sft": sft.CONFIG_TYPES,
    "reward": reward.CONFIG_TYPES,
    "ppo": ppo.CONFIG_TYPES,
    "dpo": dpo.CONFIG_TYPES,
    "kto": kto.CONFIG_TYPES,
    "pipeline": pipeline_options.CONFIG_TYPES,
    "grpo": ppo.CONFIG_TYPES,  # the ppo stage as GRPO
}


def _recipe(tmp_path: Path, **options: object) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny", "output_dir": str(tmp_path), **options}))
    return str(path)


def _parse(*argv: str):
    return parse(SFT_TYPES, list(argv), prog="rlhf sft", description="")


def test_yaml_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, learning_rate=0.001, lora_r=8)
    model, _, config = _parse("--config", recipe, "--learning_rate", "1e-4")
    assert config.learning_rate == pytest.approx(1e-4)
    assert model.lora_r == 8


def test_misspelt_yaml_key_is_an_error_naming_file_key_and_suggestion(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, learning_rat=0.001)
    with pytest.raises(
        ConfigError, match=r"recipe\.yaml: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"
    ):
        _parse("--config", recipe)


def test_unknown_flag_is_an_error_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option '--lora_rr' \(did you mean 'lora_r'\?\)"):
        _parse("--config", _recipe(tmp_path), "--lora_rr", "4")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lora_r": "many"}, "lora_r"),
        ({"num_train_epochs": [1, 2]}, "num_train_epochs: expected"),
        ({"quantization": "5bit"}, r"quantization: '5bit' is not one of"),
        ({"overlong": "ignore"}, r"overlong: 'ignore' is not one of"),
        ({"merge_adapter": 3}, "merge_adapter: expected bool"),
        ({"quantization": "none", "load_in_4bit": True}, "contradicts load_in_4bit"),
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse("--config", _recipe(tmp_path, **options))


def test_a_key_set_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("learning_rate: 0.1\nlora_r: 4\nlearning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: line 3: key 'learning_rate' is set twice"):
        _parse("--config", str(path))


def test_recipe_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- learning_rate: 1\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        _parse("--config", str(path))


def test_quantization_key_drives_trl_flags(tmp_path: Path) -> None:
    model, _, _ = _parse("--config", _recipe(tmp_path, quantization="4bit"))
    assert model.load_in_4bit and not model.load_in_8bit
    model, _, _ = _parse("--config", _recipe(tmp_path, load_in_8bit=True))
    assert model.quantization == "8bit"


def test_precision_follows_the_hardware_when_unset(tmp_path: Path) -> None:
    _, _, config = _parse("--config", _recipe(tmp_path))
    assert config.bf16 is False and config.fp16 is False  # CPU


def _all_recipes() -> list[Path]:
    return sorted(RECIPES.rglob("*.yaml"))


def test_the_options_every_stage_shares_are_declared_once() -> None:
    """Resuming, checkpoints kept and precision come from one class, in TRL's stages ahead of TRL's own fields."""
    for stage in ("sft", "reward", "ppo", "dpo", "kto"):
        config = STAGE_TYPES[stage][-1]
        for name in ("resume", "save_total_limit", "bf16", "fp16"):
            declared_by = next(c for c in config.__mro__ if name in inspect.get_annotations(c))
            assert declared_by is RunOptions, f"{stage}: {name} is declared by {declared_by.__name__}"


def test_there_are_recipes_for_every_model_and_stage() -> None:
    names = {(p.parent.name, p.stem) for p in _all_recipes()}
    for model in ("tiny", "qwen2.5-0.5b-instruct", "llama-3.2-1b-instruct", "qwen2.5-7b-instruct"):
        assert {(model, stage) for stage in ("sft", "reward", "ppo", "dpo", "kto")} <= names
        assert model == "tiny" or (model, "grpo") in names  # tiny: --ppo.advantage_estimator grpo


@pytest.mark.parametrize("recipe", _all_recipes(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses(recipe: Path) -> None:
    types = STAGE_TYPES[recipe.stem]
    configs = parse(types, ["--config", str(recipe)], prog="rlhf", description="")
    assert configs[0].model_name_or_path if recipe.stem != "pipeline" else configs[0].prompts


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    from rlhf.config import resolved_dict, write_resolved_config

    parsed = _parse("--config", _recipe(tmp_path, lora_r=4, learning_rate=0.01, merge_adapter=True))
    path = tmp_path / "run" / "rlhf_config.yaml"
    write_resolved_config(path, "sft", *parsed)
    again = _parse("--config", str(path))
    assert resolved_dict(*again) == resolved_dict(*parsed)


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("target_kl", "adaptive_kl_target.*max_approx_kl"),
        ("vf_coef", "value_learning_rate"),
        ("beta", "kl_coef"),
        ("num_iterations", "ppo_epochs"),
    ],
)
def test_ppo_keys_that_mean_something_else_here_say_what_to_use(tmp_path: Path, key: str, hint: str) -> None:
    """`target_kl` is early stopping in CleanRL and old TRL; `vf_coef` would cancel out here."""
    with pytest.raises(ConfigError, match=rf"recipe\.yaml: '{key}' is not an option: .*{hint}"):
        parse(ppo.CONFIG_TYPES, ["--config", _recipe(tmp_path, **{key: 0.1})], prog="rlhf ppo", description="")
    with pytest.raises(ConfigError, match=rf"--{key} is not an option: .*{hint}"):
        parse(ppo.CONFIG_TYPES, [f"--{key}", "0.1"], prog="rlhf ppo", description="")


def test_the_run_file_records_what_ran(tiny_sft_run: Path) -> None:
    """Defaults the stage resolves (precision, compute dtype, assistant-only loss) are written resolved."""
    options = yaml.safe_load((tiny_sft_run / "rlhf_config.yaml").read_text())
    assert options["dtype"] == "float32" and options["bnb_4bit_compute_dtype"] == "float32"
    assert options["assistant_only_loss"] is True
    assert options["quantization"] == "4bit" and options["merge_base"] == "dequantized"
    # tokens are written as they ran (transformers' to_dict writes "<EOS_TOKEN>"), secrets are not
    assert not any(isinstance(v, str) and v.endswith("_TOKEN>") for v in options.values())
    assert options["hub_token"] is None
    recorded = parse(sft.CONFIG_TYPES, ["--config", str(tiny_sft_run / "rlhf_config.yaml")], prog="t", description="")
    rerun = yaml.safe_load(yaml.safe_dump(resolved_dict(*recorded)))
    assert rerun == options  # the file re-runs as the same configuration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"advantage_estimator": "grpo", "num_generations": 3},
            "num_generations: 3 does not divide rollout_batch_size",
        ),
        ({"advantage_estimator": "rloo", "num_generations": 1}, "num_generations: 1; rloo compares answers"),
        ({"kl_coef": -0.1}, "kl_coef: -0.1 < 0"),
        ({"kl_penalty": "loss", "kl_estimator": "k1"}, "kl_estimator: k1 as a loss term"),
        ({"kl_coef": 0.0, "adaptive_kl_target": 1.0}, "adaptive_kl_target"),
        ({"reward_funcs": ["rlhf.tiny.task:gold_reward"], "reward_weights": [1.0, 2.0]}, "reward_weights: 2 weights"),
        ({"advantage_estimator": "ppo"}, r"advantage_estimator: 'ppo' is not one of"),
        ({"loss_type": "sequence"}, r"loss_type: 'sequence' is not one of"),
        # transformers' constant schedule has no warm-up: asking for one is an error, not silently ignored
        ({"warmup_steps": 2}, "warmup_steps: 2 with lr_scheduler_type constant, which has no warm-up"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, r"lr_scheduler_type: 'reduce_lr_on_plateau' is not one of"),
        # the sampling fields (SamplingConfig, which rlhf eval's overrides go through too)
        ({"max_new_tokens": 0}, "max_new_tokens: 0; an answer needs at least 1"),
        ({"temperature": 0.0}, "temperature: 0.0; it divides the logits"),
        ({"top_p": 1.5}, r"top_p: 1.5; a probability mass in \(0, 1\]"),
        ({"top_k": -1}, "top_k: -1; a count of tokens"),
        ({"forward_batch_size": 0}, "forward_batch_size: 0"),
        ({"uwo_coef": -1.0}, "uwo_coef: -1.0 < 0"),
    ],
)
def test_bad_rl_settings_are_errors_naming_the_key(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(ppo.CONFIG_TYPES, ["--config", _recipe(tmp_path, **options)], prog="rlhf ppo", description="")


def test_group_size_and_kl_estimator_follow_the_algorithm_when_unset(tmp_path: Path) -> None:
    def rl(**options: object):
        return parse(ppo.CONFIG_TYPES, ["--config", _recipe(tmp_path, **options)], prog="rlhf ppo", description="")[2]

    assert (rl().num_generations, rl().kl_estimator, rl().uses_critic) == (1, "k1", True)
    grpo = rl(advantage_estimator="grpo", kl_penalty="loss")
    assert (grpo.num_generations, grpo.kl_estimator, grpo.uses_critic) == (4, "k3", False)
    assert not rl(kl_coef=0.0).uses_reference


@pytest.mark.parametrize(
    ("gpu", "asked", "expected"),
    [
        (None, (None, None), (False, False, "float32")),  # CPU: fp32
        ((8, 0), (None, None), (True, False, "bfloat16")),  # Ampere (A100) and newer: bf16
        ((9, 0), (None, None), (True, False, "bfloat16")),  # Hopper (H100)
        ((7, 5), (None, None), (False, True, "float16")),  # Turing (T4): no bf16, fp16
        ((8, 0), (None, True), (False, True, "float16")),  # asked for fp16 on an A100: kept
        ((7, 5), (False, False), (False, False, "float32")),  # asked for fp32: kept
    ],
)
def test_precision_left_unset_is_chosen_for_the_hardware(
    gpu: tuple[int, int] | None,
    asked: tuple[bool | None, bool | None],
    expected: tuple[bool, bool, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the README promises: bf16 on GPUs that have it, fp16 on older ones such as the T4, fp32 on CPU;
    the model's dtype and the 4-bit compute dtype follow."""
    import types

    import torch

    from rlhf import models
    from rlhf.arguments import ModelArguments, auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: gpu)
    config = types.SimpleNamespace(bf16=asked[0], fp16=asked[1])
    auto_precision(config)
    model_args = ModelArguments(model_name_or_path="builtin:tiny", quantization="4bit")
    models.resolve_dtypes(model_args, config)
    assert (config.bf16, config.fp16, model_args.dtype) == expected
    assert model_args.bnb_4bit_compute_dtype == expected[2]
