"""`rlhf ppo`: PPO against the reward model, with a KL leash to the SFT model, on ONE shared base.

The base is the SFT model (the merged output of ``rlhf sft``), loaded once, quantized as the recipe
says; the policy, reference, value and reward roles are adapters on it (see
:mod:`rlhf.policy.roles`). The run writes the policy adapter at the top of ``output_dir`` (it loads
with ``PeftModel.from_pretrained`` on the SFT model), the value adapter and head under
``value/``, a line of metrics per iteration in ``metrics.jsonl``, and ``metrics.json`` comparing the
SFT and PPO policies on held-out prompts (gold judge where the task has one, reward model, KL).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from rlhf import data, evaluation, overoptimisation, runs, sharding
from rlhf import distributed as dist
from rlhf.arguments import DataArguments, ModelArguments, StageConfig
from rlhf.config import parse
from rlhf.policy import loading
from rlhf.policy.roles import POLICY, VALUE, VALUE_HEAD_FILE, SharedBase
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.tracking import STEP_METRICS_FILE
from rlhf.ppo.trainer import PPOTrainer
from rlhf.results import PPOResult
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

SAMPLES_FILE = "eval_samples.jsonl"
CONFIG_TYPES = [ModelArguments, DataArguments, PPOConfig]
DESCRIPTION = "PPO: optimise a LoRA policy against a reward model with a KL leash, all roles on one shared base."


def build_roles(model_args: ModelArguments, config: PPOConfig) -> tuple[SharedBase, Any]:
    """The shared base with the roles the run trains (:func:`rlhf.policy.loading.load_roles`), and the tokenizer."""
    if not config.reward_model_path and not config.reward_funcs:
        raise ConfigError(
            "reward_model_path: the run folder of `rlhf reward` is required (or reward functions in reward_funcs)"
        )
    if config.uses_critic and config.value_init == "reward" and not config.reward_model_path:
        raise ConfigError("value_init: 'reward' copies the reward model, and there is none; use 'random'")
    return loading.load_roles(
        model_args,
        config,
        config,
        seed=config.seed,
        value_init=config.value_init if config.uses_critic else None,  # critic-free: no value adapter or head
        gradient_checkpointing=config.gradient_checkpointing,
    )


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
