"""The one loader of a policy: a base, its roles (policy adapter, reward models), the tokenizer, a sampler.

``rlhf ppo`` loads its roles here (with a critic, for training); ``rlhf eval`` and the pipeline's
later rounds load the policy a run trained (:func:`load_policy`: its adapter on the shared base, no
critic, no optimizer). Every load checks that each reward LoRA was trained on the very base it is
put on, quantized the same way, since a LoRA only means something on the weights it was trained on.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig

from rlhf import ensemble, models, runs
from rlhf.arguments import ModelArguments
from rlhf.policy.config import SamplingConfig, ScoringConfig
from rlhf.policy.roles import POLICY, SharedBase
from rlhf.policy.sampler import PolicySampler
from rlhf_core.errors import ConfigError

# What must match between the reward run and the policy's base for the reward LoRA to see the weights it was
# trained on.
QUANTIZATION_KEYS = ("quantization", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_compute_dtype")


def check_reward_model(model_args: ModelArguments, scoring: ScoringConfig) -> None:
    """The reward LoRA (each member's, for an ensemble) must have been trained on the very base loaded,
    quantized the same way; an aggregation other than the mean needs an ensemble."""
    reward_dir = str(scoring.reward_model_path)
    if not Path(reward_dir).is_dir():
        raise ConfigError(f"reward_model_path: {reward_dir}: no such folder{models.producer_hint(Path(reward_dir))}")
    members = ensemble.members(reward_dir)
    if len(members) == 1 and scoring.reward_aggregation != "mean":
        raise ConfigError(
            f"reward_aggregation: {scoring.reward_aggregation} combines the members of a reward ensemble, and "
            f"{reward_dir} is one reward model; train an ensemble (rlhf reward --ensemble_size 4) or use mean"
        )
    for folder in dict.fromkeys([reward_dir, *(m.path for m in members)]):
        _check_trained_on_base(model_args, folder)


def _check_trained_on_base(model_args: ModelArguments, reward_dir: str) -> None:
    reward = runs.read_config(reward_dir)

    def where(name: str) -> Path:
        return Path(models.resolve_model_path(name)).resolve()

    if where(str(reward["model_name_or_path"])) != where(model_args.model_name_or_path):
        raise ConfigError(
            f"reward model {reward_dir} was trained on {reward['model_name_or_path']!r}, but PPO loads "
            f"{model_args.model_name_or_path!r}: the shared base must be the one the reward LoRA was trained on"
        )
    keys = QUANTIZATION_KEYS[:1] if model_args.quantization != "4bit" else QUANTIZATION_KEYS
    for key in keys:
        theirs, ours = reward.get(key), getattr(model_args, key)
        if theirs is not None and theirs != ours:  # None: an older run folder that did not record it
            raise ConfigError(
                f"reward model {reward_dir} was trained with {key}: {theirs!r}, PPO loads the base with {ours!r}: "
                "use the same so the reward LoRA sees the weights it was trained on"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_roles(
    model_args: ModelArguments,
    scoring: ScoringConfig,
    precision: Any,
    *,
    seed: int,
    value_init: str | None = None,
    gradient_checkpointing: bool = False,
    policy_lora: LoraConfig | None = None,
) -> tuple[SharedBase, Any]:
    """The shared base with the roles a run uses, and the tokenizer (checks the reward model fits the base).

    ``precision``: the run's options with ``bf16`` / ``fp16`` (what an unset dtype resolves to; None:
    float32); ``value_init``: how the critic starts (None: no value adapter or head, as evaluation and
    critic-free methods load it); ``policy_lora``: the policy adapter's shape where it must fit a saved
    adapter trained elsewhere (unset: the recipe's, ``model_args``). The policy adapter starts at zero
    (the base itself) until one is loaded into it.
    """
    models.resolve_dtypes(model_args, precision)
    if scoring.reward_model_path:
        check_reward_model(model_args, scoring)
    tokenizer = models.load_tokenizer(model_args)
    seed_everything(seed)
    base = models.load_causal_lm(model_args, tokenizer)
    if models.quantization_config(model_args) is None:  # a quantized one was placed on this device as it loaded
        base.to(models.process_device())
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    lora = policy_lora or models.lora_config(model_args, "CAUSAL_LM")
    if lora is None:
        raise ConfigError("PPO trains a LoRA policy on the shared base: use_peft must stay true")
    lora.lora_dropout = 0.0  # dropout would make the recomputed log-probs differ from the sampling ones
    return SharedBase(base, lora, scoring.reward_model_path or None, value_init=value_init), tokenizer


def load_policy(
    model_args: ModelArguments,
    adapter_dir: str | Path,
    sampling_config: SamplingConfig,
    scoring: ScoringConfig,
    precision: Any,
    *,
    seed: int,
) -> PolicySampler:
    """A sampler of the policy a run trained (its adapter on the shared base), scoring with ``scoring``.

    What evaluation and the pipeline's later rounds sample from: no critic, no optimizer.
    """
    roles, tokenizer = load_roles(model_args, scoring, precision, seed=seed)
    roles.load_adapter(POLICY, adapter_dir)
    return PolicySampler.from_config(roles, tokenizer, sampling_config, scoring, models.autocast_dtype(precision))


def load_judge(spec: str | None) -> Callable[[Any, str], float] | None:
    """``"package.module:function"`` to the function (the gold judge of a task with one)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
