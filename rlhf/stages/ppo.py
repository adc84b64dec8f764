"""`rlhf ppo`: PPO against the reward model, with a KL leash to the SFT model, on ONE shared base.

The base is the SFT model (the merged output of ``rlhf sft``), loaded once, quantized as the recipe
says; the policy, reference, value and reward roles are adapters on it (see
:mod:`rlhf.ppo.roles`). The run writes the policy adapter at the top of ``output_dir`` (it loads
with ``PeftModel.from_pretrained`` on the SFT model), the value adapter and head under
``value/``, a line of metrics per iteration in ``metrics.jsonl``, and ``metrics.json`` comparing the
SFT and PPO policies on held-out prompts (gold judge where the task has one, reward model, KL).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from rlhf import data, ensemble, evaluation, models, overoptimisation, runs, sharding
from rlhf.arguments import DataArguments, ModelArguments, StageConfig
from rlhf.config import parse
from rlhf.ppo import distributed as dist
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.roles import POLICY, VALUE, VALUE_HEAD_FILE, SharedBase
from rlhf.ppo.sampler import PolicySampler
from rlhf.ppo.trainer import STEP_METRICS_FILE, PPOTrainer
from rlhf.results import PPOResult
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

SAMPLES_FILE = "eval_samples.jsonl"
CONFIG_TYPES = [ModelArguments, DataArguments, PPOConfig]
DESCRIPTION = "PPO: optimise a LoRA policy against a reward model with a KL leash, all roles on one shared base."


# What must match between the reward run and PPO for the reward LoRA to see the weights it was trained on.
QUANTIZATION_KEYS = ("quantization", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_compute_dtype")


def _check_reward_model(model_args: ModelArguments, config: PPOConfig) -> None:
    """The reward LoRA (each member's, for an ensemble) must have been trained on the very base PPO loads,
    quantized the same way; an aggregation other than the mean needs an ensemble."""
    reward_dir = str(config.reward_model_path)
    if not Path(reward_dir).is_dir():
        raise ConfigError(f"reward_model_path: {reward_dir}: no such folder{models.producer_hint(Path(reward_dir))}")
    members = ensemble.members(reward_dir)
    if len(members) == 1 and config.reward_aggregation != "mean":
        raise ConfigError(
            f"reward_aggregation: {config.reward_aggregation} combines the members of a reward ensemble, and "
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_roles(model_args: ModelArguments, config: PPOConfig, critic: bool = True) -> tuple[SharedBase, Any]:
    """The shared base with the roles the run uses, and the tokenizer (checks the reward model fits the base).

    ``critic=False`` leaves the value adapter out even for PPO (evaluation samples and scores only).
    """
    if not config.reward_model_path and not config.reward_funcs:
        raise ConfigError(
            "reward_model_path: the run folder of `rlhf reward` is required (or reward functions in reward_funcs)"
        )
    if critic and config.uses_critic and config.value_init == "reward" and not config.reward_model_path:
        raise ConfigError("value_init: 'reward' copies the reward model, and there is none; use 'random'")
    models.resolve_dtypes(model_args, config)
    if config.reward_model_path:
        _check_reward_model(model_args, config)
    tokenizer = models.load_tokenizer(model_args)
    _seed_everything(config.seed)
    base = models.load_causal_lm(model_args, tokenizer)
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    lora = models.lora_config(model_args, "CAUSAL_LM")
    if lora is None:
        raise ConfigError("PPO trains a LoRA policy on the shared base: use_peft must stay true")
    lora.lora_dropout = 0.0  # dropout would make the recomputed log-probs differ from the sampling ones
    value_init = config.value_init if config.uses_critic and critic else None  # no value adapter or head
    return SharedBase(base, lora, config.reward_model_path or None, value_init=value_init), tokenizer


def policy_sampler(model_args: ModelArguments, config: PPOConfig, adapter_dir: str | Path) -> PolicySampler:
    """A sampler of the policy a run trained (its adapter on the shared base), scoring with ``config``'s reward.

    What evaluation and the pipeline's later rounds sample from: no critic, no optimizer.
    """
    roles, tokenizer = build_roles(model_args, config, critic=False)
    roles.load_adapter(POLICY, adapter_dir)
    return PolicySampler.from_config(roles, tokenizer, config)


def build(model_args: ModelArguments, data_args: DataArguments, config: PPOConfig) -> PPOTrainer:
    """The trainer with its shared base and prompts (train split for rollouts, test split held out)."""
    if not data_args.dataset_name:
        raise ConfigError("dataset_name: PPO needs prompts (a dataset with a 'prompt' column)")
    name, subset, columns = data_args.dataset_name, data_args.dataset_config, data_args.column_map
    train_rows = data.load_rows(name, data_args.dataset_train_split, "prompt", subset, columns)
    if train_rows is None:
        raise ConfigError(f"{data_args.dataset_name}: no {data_args.dataset_train_split!r} split of prompts")
    eval_rows = data.load_rows(name, data_args.dataset_test_split, "prompt", subset, columns)
    if config.fsdp:
        sharding.check_base(model_args)
    roles, tokenizer = build_roles(model_args, config)
    if config.fsdp:
        roles.shard()  # before the trainer builds its optimizer over the (then sharded) parameters
    train_prompts = _prompts(train_rows[0], tokenizer, config, data_args, "ppo train prompts")
    eval_prompts = _prompts(eval_rows[0], tokenizer, config, data_args, "ppo eval prompts") if eval_rows else None
    if eval_prompts is not None and config.eval_max_prompts is not None:
        eval_prompts = eval_prompts.select(range(min(config.eval_max_prompts, len(eval_prompts))))
    return PPOTrainer(roles, tokenizer, config, train_prompts, eval_prompts)


def _prompts(
    rows: list[dict[str, Any]], tokenizer: Any, config: PPOConfig, data_args: DataArguments, name: str
) -> Dataset:
    """The prompt column, with prompts over ``max_prompt_length`` dropped or refused (never silently)."""
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    if config.max_prompt_length is None:
        return prompts
    if data_args.overlong == "truncate":
        raise ConfigError("overlong: truncate would cut the end of a prompt (the question); use drop or error")

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"]
        if isinstance(prompt, list):
            return {
                "input_ids": tokenizer.apply_chat_template(
                    prompt, add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            }
        return {"input_ids": tokenizer(prompt)["input_ids"]}

    encoded = prompts.map(encode, desc=f"measuring {name}")
    kept, _ = data.enforce_max_length(encoded, config.max_prompt_length, data_args.overlong, name)
    return kept.remove_columns("input_ids")


def _write_outputs(trainer: PPOTrainer, output_dir: Path) -> None:
    """The adapters, value head and tokenizer: every process takes part (a sharded run gathers), the first writes."""
    trainer.save_adapter(POLICY, output_dir)
    if trainer.roles.has_critic:
        trainer.save_adapter(VALUE, output_dir / VALUE)
        trainer.roles.save_value_head(output_dir / VALUE / VALUE_HEAD_FILE)
    if dist.rank() == 0:
        trainer.tokenizer.save_pretrained(str(output_dir))


def run(config: StageConfig[PPOConfig]) -> PPOResult:
    """Run the PPO stage; the result is also written to ``output_dir/metrics.json``."""
    model_args, data_args, options = config.model, config.data, config.training
    started = time.time()
    dist.init_from_env()
    output_dir = Path(options.output_dir)
    checkpoint = runs.start("ppo", options.output_dir, options.resume)
    trainer = build(model_args, data_args, options)
    if dist.rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        runs.record_config("ppo", str(output_dir), model_args, data_args, options)
        if checkpoint is None and (output_dir / STEP_METRICS_FILE).exists():
            (output_dir / STEP_METRICS_FILE).unlink()
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
        trainer.load_checkpoint(checkpoint)
    elif options.policy_init:  # a checkpoint already holds the policy it continued from
        logger.info("policy starts from %s", options.policy_init)
        trainer.roles.load_adapter(POLICY, options.policy_init)
    history = trainer.train()

    final: dict[str, float] = {}
    first_iteration: dict[str, float] = {}
    if history:
        last = history[-10:]
        final = {key: float(np.mean([h[key] for h in last])) for key in last[0] if key != "step"}
        # how well the critic starts: >= 0 once its head is on the scale of the returns
        first_iteration = {
            key: history[0][key]
            for key in ("value/explained_variance", "loss/value_loss", "loss/value_clipfrac", "objective/score")
            if key in history[0]
        }
    samples: list[dict[str, Any]] = []
    comparison = None
    if trainer.eval_prompts is not None and len(trainer.eval_prompts) > 0:
        prompts = [row["prompt"] for row in trainer.eval_prompts]
        samples = evaluation.sample_policies(trainer.sampler, prompts, options.eval_seeds, trainer.judge)
        comparison = evaluation.compare(samples)
    functions = trainer.sampler.reward_functions
    result = PPOResult(
        output_dir=str(output_dir),
        steps=trainer.step,
        advantage_estimator=options.advantage_estimator,
        reward_components=list(trainer.sampler.reward_weights),
        judge_is_reward=trainer.judge is not None
        and functions is not None
        and any(getattr(f, "judge", f) is trainer.judge for f in functions.functions),
        final=final,
        first_iteration=first_iteration,
        eval=comparison,
        diagnosis=overoptimisation.detect(
            history, [int(c.name.split("-")[1]) for c in output_dir.glob("checkpoint-*") if c.is_dir()]
        ),
        runtime_seconds=round(time.time() - started, 1),
    )
    _write_outputs(trainer, output_dir)
    if dist.rank() == 0:
        with (output_dir / SAMPLES_FILE).open("w") as handle:
            for sample in samples:
                handle.write(json.dumps(sample) + "\n")
        result.write(output_dir)
    dist.barrier()
    return result


def main(argv: Sequence[str] | None = None) -> PPOResult:
    """``rlhf ppo``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf ppo", description=DESCRIPTION)))
