"""`--fsdp` of the TRL-based stages (sft, reward, dpo, kto): what they hand TRL is what FSDP-QLoRA needs.

Accelerate shards only on GPUs, so on CPU these tests stop each stage where it builds its TRL
trainer and read what it would have been given: the loaded model (4-bit weights stored in a float
dtype, so FSDP shards them), the training arguments and the FSDP plugin Accelerate builds from them
(FSDP2, the decoder layer as the wrap unit, memory-efficient loading). A sharded run itself is
`benchmarks/gpu_check.py`'s, on 2+ GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from conftest import RECIPES, torchrun

from rlhf import sharding
from rlhf.config import parse, resolved_dict
from rlhf.stages import dpo, kto, offline, reward, sft
from rlhf_core.errors import ConfigError

FSDP = ["--fsdp", "full_shard auto_wrap"]


class Handed(Exception):
    """Raised in place of building a TRL trainer, with what the stage handed it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("handed to TRL")
        self.kwargs = kwargs


def _trainer(**kwargs: Any) -> None:
    raise Handed(**kwargs)


def _build_sft(configs: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sft, "_SFTTrainer", _trainer)
    sft.build(*configs)


def _build_reward(configs: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reward, "RewardTrainer", _trainer)
    reward.build(*configs)


def _offline(module: Any) -> Callable[[tuple[Any, ...], pytest.MonkeyPatch], None]:
    def build(configs: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
        offline.build(dataclasses.replace(module.METHOD, trainer=_trainer), *configs)

    return build


# stage: (its module, how to build it up to TRL's trainer)
STAGES: dict[str, tuple[Any, Callable[[tuple[Any, ...], pytest.MonkeyPatch], None]]] = {
    "sft": (sft, _build_sft),
    "reward": (reward, _build_reward),
    "dpo": (dpo, _offline(dpo)),
    "kto": (kto, _offline(kto)),
}


def _parse(stage: str, tmp_path: Path, *flags: str) -> tuple[Any, ...]:
    """The stage's tiny recipe on the built-in tiny base (the later stages' recipes name runs/tiny/sft/merged)."""
    module = STAGES[stage][0]
    argv = ["--config", str(RECIPES / "tiny" / f"{stage}.yaml"), "--model_name_or_path", "builtin:tiny"]
    argv += ["--output_dir", str(tmp_path / stage), "--report_to", "none", *flags]
    return parse(module.CONFIG_TYPES, argv, prog=f"rlhf {stage}", description="")


@pytest.mark.parametrize("quantization", ["4bit", "none"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_what_a_sharded_stage_hands_trl_is_fsdp_qlora(
    stage: str, quantization: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = _parse(stage, tmp_path, *FSDP, "--quantization", quantization)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sharding, "accelerator_type", lambda: "cuda")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # registered, so the stage setting it is undone after the test
    with pytest.raises(Handed) as handed:
        STAGES[stage][1](configs, monkeypatch)
    model, args = handed.value.kwargs["model"], handed.value.kwargs["args"]
    assert handed.value.kwargs["peft_config"] is not None  # the LoRA: PEFT wraps the model inside TRL

    # the plugin the trainer's Accelerator is built from (transformers passes these options as they are)
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full_shard under FSDP2
    assert plugin.cpu_ram_efficient_loading and os.environ["ACCELERATE_USE_FSDP"] == "true"
    # Accelerate's FSDP2 wrap policy picks exactly the decoder layers (the model's _no_split_modules) as units
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    assert policy is not None
    units = [m for m in model.modules() if policy(m)]
    assert units and units == sharding.decoder_layers(model)
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == sorted({type(m).__name__ for m in units})

    weights = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
    if quantization == "none":
        assert not weights
        return
    # every 4-bit weight is stored in a float dtype (Accelerate keeps non-float ones whole in every process),
    # the dtype the run computes in, which FSDP's mixed precision then never casts
    quant = model.config.quantization_config
    storage = quant.bnb_4bit_quant_storage
    storage = getattr(torch, storage) if isinstance(storage, str) else storage
    compute = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    assert storage == compute and quant.bnb_4bit_compute_dtype == compute
    assert weights and all(p.dtype == storage and p.is_floating_point() for p in weights)


def test_resolved_fsdp_options_parse_back_to_the_same_plugin(tmp_path: Path) -> None:
    """A run's rlhf_config.yaml, passed back as --config, shards the same way (transformers turns fsdp into True)."""
    (model, data, training) = _parse("sft", tmp_path, *FSDP, "--fsdp_config", _json(tmp_path, {"fsdp_offload": 0}))
    assert training.fsdp == "full_shard auto_wrap"
    assert training.fsdp_config["offload"] == 0  # Accelerate's fsdp_ prefix is dropped, as transformers does
    recipe = tmp_path / "resolved.yaml"
    recipe.write_text(yaml.safe_dump(resolved_dict(model, data, training)))
    again = parse(sft.CONFIG_TYPES, ["--config", str(recipe)], prog="rlhf sft", description="")[2]
    assert again.fsdp == training.fsdp and again.fsdp_plugin_args == training.fsdp_plugin_args


def _json(tmp_path: Path, options: dict[str, Any]) -> str:
    path = tmp_path / "fsdp.json"
    path.write_text(json.dumps(options))
    return str(path)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sharding_on_cpu_is_one_line_naming_what_works(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 CPU processes: refused before any row or model loads (the recipes' model folder need not exist)."""
    argv = ["--config", str(RECIPES / "tiny" / f"{stage}.yaml"), "--output_dir", str(tmp_path), "--report_to", "none"]
    argv += ["--model_name_or_path", str(tmp_path / "absent"), "--dataset_name", str(tmp_path / "absent.jsonl")]
    configs = parse(STAGES[stage][0].CONFIG_TYPES, [*argv, *FSDP], prog=f"rlhf {stage}", description="")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sharding, "accelerator_type", lambda: None)
    with pytest.raises(ConfigError, match=rf"^fsdp: rlhf {stage} shards through Accelerate, which shards only on GPUs"):
        STAGES[stage][1](configs, monkeypatch)


def test_sharding_options_it_cannot_run_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*flags: str, world: str = "2") -> None:
        configs = _parse("sft", tmp_path, *flags)
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setattr(sharding, "accelerator_type", lambda: "cuda")
        try:
            _build_sft(configs, monkeypatch)
        finally:
            monkeypatch.delenv("WORLD_SIZE")

    with pytest.raises(ConfigError, match=r"^fsdp: 'hybrid_shard auto_wrap' is not an FSDP2 setting; use 'full_shard"):
        build("--fsdp", "hybrid_shard auto_wrap")
    with pytest.raises(ConfigError, match=r"^fsdp: 'auto_wrap' is not an FSDP2 setting"):
        build("--fsdp", "auto_wrap")
    with pytest.raises(ConfigError, match=r"^fsdp_config: version 1 \(FSDP1\) .* use version 2"):
        build(*FSDP, "--fsdp_config", _json(tmp_path, {"fsdp_version": 1}))
    with pytest.raises(ConfigError, match=r"^fsdp: sharding needs 2 or more processes \(torchrun"):
        build(*FSDP, world="1")
    with pytest.raises(ConfigError, match=r"^fsdp: quantization 8bit cannot be sharded"):
        build(*FSDP, "--quantization", "8bit")
    with pytest.raises(ConfigError, match=r"^fsdp: an adapter on lm_head \(lora_target_modules"):
        build(*FSDP, "--lora_target_modules", "lm_head")
    with pytest.raises(ConfigError, match=r"^fsdp: bnb_4bit_compute_dtype bfloat16 under float32 training"):
        build(*FSDP, "--bnb_4bit_compute_dtype", "bfloat16")
    with pytest.raises(ConfigError, match=r"^fsdp: bnb_4bit_quant_storage uint8 under float32 training"):
        build(*FSDP, "--bnb_4bit_quant_storage", "uint8")


@pytest.mark.slow
def test_sft_sharded_under_torchrun_on_cpu_says_why_in_one_line(tmp_path: Path) -> None:
    """The command of issue 23 (2 gloo processes): a one-line error, no traceback, nothing written."""
    out = tmp_path / "sft"
    args = ["sft", "--config", str(RECIPES / "tiny" / "sft.yaml"), "--output_dir", str(out), *FSDP]
    result = torchrun(29561, *args)
    assert result.returncode != 0
    # each process's one line (the launcher then prints its own report of the failed processes); the two
    # processes write to one stderr at once, so their lines may run together: counted, not split
    message = "rlhf sft: error: fsdp: rlhf sft shards through Accelerate, which shards only on GPUs"
    assert result.stderr.count(message) == 2, result.stderr[-3000:]
    assert result.stderr.count("rlhf sft: error: ") == 2
    assert "/rlhf/" not in "".join(line for line in result.stderr.splitlines() if line.startswith("  File "))
    assert not (out / "adapter_model.safetensors").exists()
