"""`rlhf eval`: is the trained policy better than the SFT policy, and how good is the reward model?

Rebuilds the run's shared base from its resolved config (a ``rlhf ppo`` run: PPO or a critic-free
method; or a ``rlhf dpo`` / ``rlhf kto`` run, whose adapter is a LoRA on the same SFT model), loads
the trained policy adapter, and answers held-out prompts with both policies (same prompts, same
seeds) under the same sampler, judges and reward model. A DPO or KTO run has no prompts or reward
model of its own: ``--prompts`` and ``--reward_model_path`` name them. Reports:

* PPO-vs-SFT win rates judged by the reward model and, where the task has one, the gold judge,
  with bootstrap confidence intervals;
* the KL of the PPO policy to the SFT reference, response lengths and EOS rates;
* ROUGE against the prompts' reference answers, where the dataset has a ``reference`` column;
* the reward model's held-out pairwise accuracy, score gap and calibration (ECE), on the test
  split of the preference data it was trained on.

Writes ``metrics.json`` and every sample to ``samples.jsonl`` in ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlhf import data, evaluation, runs
from rlhf.arguments import DataArguments, ModelArguments
from rlhf.config import from_options, parse
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.sampler import PolicySampler
from rlhf.ppo.trainer import load_judge
from rlhf.results import Calibration, EvalResult, read_stage
from rlhf.stages import ppo
from rlhf_core.errors import ConfigError
from rlhf_core.rows import validate

DESCRIPTION = (
    "Evaluate a ppo, dpo or kto run: win rates vs the SFT policy, KL, ROUGE, reward-model accuracy and calibration."
)
OFFLINE_STAGES = ("dpo", "kto")
SAMPLES_FILE = "samples.jsonl"


@dataclass
class EvalConfig:
    """What to evaluate and on which prompts."""

    ppo_dir: str | None = field(
        default=None, metadata={"help": "Run folder of `rlhf ppo`, `rlhf dpo` or `rlhf kto` (its policy adapter)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write; unset: <ppo_dir>/../eval."})
    prompts: str | None = field(
        default=None, metadata={"help": "Prompt dataset (default: the PPO run's); needs a 'prompt' column."}
    )
    split: str = field(default="test", metadata={"help": "Split of the prompts: held out from PPO training."})
    max_prompts: int | None = field(default=None, metadata={"help": "Evaluate on at most this many prompts."})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "Sampling seeds (answers per prompt)."}
    )
    preferences: str | None = field(
        default=None, metadata={"help": "Preference data for reward-model accuracy (default: the reward run's)."}
    )
    max_pairs: int | None = field(default=1000, metadata={"help": "Score at most this many held-out pairs."})
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Run folder of `rlhf reward` scoring the answers (default: the PPO run's; dpo/kto: required)."
        },
    )
    gold_judge: str | None = field(default=None, metadata={"help": "'module:function' (default: the PPO run's)."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Answer length cap (default: the PPO run's; dpo/kto: the PPO default)."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (default: the PPO run's; dpo/kto: the PPO default)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


CONFIG_TYPES = [EvalConfig]


def _reward_model_metrics(sampler: PolicySampler, dataset: str, max_pairs: int | None) -> Calibration | None:
    loaded = data.load_split(dataset, "test")
    if loaded is None:
        return None
    rows, source = loaded
    validate(rows, "preference", source)
    rows = rows[:max_pairs] if max_pairs else rows
    ids = [data.preference_ids(row, sampler.tokenizer) for row in rows]
    chosen = sampler.aggregate(sampler.score_token_ids([i["chosen_ids"] for i in ids])).tolist()
    rejected = sampler.aggregate(sampler.score_token_ids([i["rejected_ids"] for i in ids])).tolist()
    return evaluation.reward_calibration(chosen, rejected, dataset=dataset)


def _run_settings(config: EvalConfig, run_dir: Path) -> tuple[ModelArguments, str, PPOConfig]:
    """The evaluated run's model, the prompt set, and the sampling and scoring settings (with the overrides)."""
    stage = read_stage(run_dir).stage
    options = runs.read_config(run_dir)
    if stage == "ppo":
        model_args, data_args, ppo_config = from_options(ppo.CONFIG_TYPES, options)
        prompt_set = config.prompts or data_args.dataset_name
    elif stage in OFFLINE_STAGES:
        model_args, data_args = from_options([ModelArguments, DataArguments], options)
        ppo_config = PPOConfig(output_dir=str(run_dir), reward_model_path=None, eval_max_prompts=0)
        if not config.prompts:
            raise ConfigError(f"prompts: a {stage} run was trained on preferences, not prompts: name the prompts")
        prompt_set = config.prompts
    else:
        raise ConfigError(f"ppo_dir: {run_dir} is a {stage} run; evaluate a ppo, dpo or kto run")
    overrides = {
        key: getattr(config, key)
        for key in ("reward_model_path", "gold_judge", "max_new_tokens", "temperature")
        if getattr(config, key) is not None
    }
    ppo_config = dataclasses.replace(ppo_config, **overrides)
    if not ppo_config.reward_model_path and not ppo_config.reward_funcs:
        raise ConfigError(f"reward_model_path: the {stage} run at {run_dir} has no reward to score answers with")
    return model_args, str(prompt_set), ppo_config


def run(config: EvalConfig) -> EvalResult:
    started = time.time()
    if not config.ppo_dir:
        raise ConfigError("ppo_dir: the run folder of `rlhf ppo`, `rlhf dpo` or `rlhf kto` is required")
    ppo_dir = Path(config.ppo_dir)
    if not (ppo_dir / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{ppo_dir}: no policy adapter (adapter_model.safetensors); did the run finish?")
    output_dir = Path(config.output_dir) if config.output_dir else ppo_dir.parent / "eval"
    model_args, prompt_set, ppo_config = _run_settings(config, ppo_dir)
    sampler = ppo.policy_sampler(model_args, ppo_config, ppo_dir)

    loaded = data.load_split(prompt_set, config.split)
    if loaded is None:
        raise ConfigError(f"{prompt_set}: no {config.split!r} split of prompts to evaluate on")
    rows, source = loaded
    validate(rows, "prompt", source)
    rows = rows[: config.max_prompts] if config.max_prompts else rows
    judge = load_judge(ppo_config.gold_judge)
    prompts = [r["prompt"] for r in rows]
    samples = evaluation.sample_policies(sampler, prompts, config.seeds, judge, show_progress=not config.disable_tqdm)

    rouge = None
    if "reference" in rows[0]:
        rouge = {
            policy: evaluation.rouge(
                [s["response"] for s in samples if s["policy"] == policy],
                [rows[s["prompt_index"]]["reference"] for s in samples if s["policy"] == policy],
            )
            for policy in evaluation.POLICIES
        }
    reward_dir = ppo_config.reward_model_path  # unset when the run was rewarded by functions alone
    preferences = config.preferences or (runs.read_config(reward_dir).get("dataset_name") if reward_dir else None)
    scores_pairs = preferences is not None and sampler.roles.has_reward_model
    comparison = evaluation.compare(samples)
    result = EvalResult(
        **vars(comparison),  # the comparison's fields, flat, beside where it was run
        output_dir=str(output_dir),
        ppo_dir=str(ppo_dir),
        prompts_dataset=prompt_set,
        rouge=rouge,
        reward_model=_reward_model_metrics(sampler, str(preferences), config.max_pairs) if scores_pairs else None,
        runtime_seconds=round(time.time() - started, 1),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    result.write(output_dir)
    with (output_dir / SAMPLES_FILE).open("w") as handle:
        for sample in samples:
            handle.write(json.dumps(sample) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> EvalResult:
    """``rlhf eval``: parse the flags, then :func:`run`."""
    (config,) = parse(CONFIG_TYPES, argv, prog="rlhf eval", description=DESCRIPTION)
    return run(config)
