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
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rlhf import data, evaluation, runs
from rlhf.arguments import DataArguments, ModelArguments
from rlhf.config import from_options, parse
from rlhf.policy import loading
from rlhf.policy.config import SamplingConfig, ScoringConfig
from rlhf.policy.sampler import PolicySampler
from rlhf.results import Calibration, EvalResult, read_stage
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

    run_dir: str | None = field(
        default=None, metadata={"help": "Run folder of `rlhf ppo`, `rlhf dpo` or `rlhf kto` (its policy adapter)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write; unset: <run_dir>/../eval."})
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

    retired_keys: ClassVar[dict[str, str]] = {
        "ppo_dir": "it is --run_dir now (the run folder of any trained policy: rlhf ppo, dpo or kto)"
    }


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


def _load(config: EvalConfig, run_dir: Path) -> tuple[PolicySampler, str, ScoringConfig]:
    """The evaluated policy's sampler (with the overrides), the prompt set, and what scores the answers.

    A ``rlhf ppo`` run samples and scores as it was trained to; a DPO or KTO run, which has neither
    setting, as a PPO run does by default (:class:`SamplingConfig`, :class:`ScoringConfig`).
    """
    stage = read_stage(run_dir).stage
    options = runs.read_config(run_dir)
    if stage == "ppo":
        model_args, data_args, sampling_config, scoring = from_options(
            [ModelArguments, DataArguments, SamplingConfig, ScoringConfig], options
        )
        prompt_set = config.prompts or data_args.dataset_name
    elif stage in OFFLINE_STAGES:
        model_args, data_args = from_options([ModelArguments, DataArguments], options)
        sampling_config, scoring = SamplingConfig(), ScoringConfig()
        if not config.prompts:
            raise ConfigError(f"prompts: a {stage} run was trained on preferences, not prompts: name the prompts")
        prompt_set = config.prompts
    else:
        raise ConfigError(f"run_dir: {run_dir} is a {stage} run; evaluate a ppo, dpo or kto run")
    sampling_config = dataclasses.replace(
        sampling_config,
        **{k: getattr(config, k) for k in ("max_new_tokens", "temperature") if getattr(config, k) is not None},
    )
    scoring = dataclasses.replace(
        scoring,
        **{k: getattr(config, k) for k in ("reward_model_path", "gold_judge") if getattr(config, k) is not None},
    )
    if not scoring.reward_model_path and not scoring.reward_funcs:
        raise ConfigError(f"reward_model_path: the {stage} run at {run_dir} has no reward to score answers with")
    # the run's own precision and seed (both resolved when it ran)
    precision = types.SimpleNamespace(bf16=options.get("bf16"), fp16=options.get("fp16"))
    sampler = loading.load_policy(model_args, run_dir, sampling_config, scoring, precision, seed=int(options["seed"]))
    return sampler, str(prompt_set), scoring


def run(config: EvalConfig) -> EvalResult:
    started = time.time()
    if not config.run_dir:
        raise ConfigError("run_dir: the run folder of `rlhf ppo`, `rlhf dpo` or `rlhf kto` is required")
    run_dir = Path(config.run_dir)
    if not (run_dir / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{run_dir}: no policy adapter (adapter_model.safetensors); did the run finish?")
    output_dir = Path(config.output_dir) if config.output_dir else run_dir.parent / "eval"
    sampler, prompt_set, scoring = _load(config, run_dir)

    loaded = data.load_split(prompt_set, config.split)
    if loaded is None:
        raise ConfigError(f"{prompt_set}: no {config.split!r} split of prompts to evaluate on")
    rows, source = loaded
    validate(rows, "prompt", source)
    rows = rows[: config.max_prompts] if config.max_prompts else rows
    judge = loading.load_judge(scoring.gold_judge)
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
    reward_dir = scoring.reward_model_path  # unset when the run was rewarded by functions alone
    preferences = config.preferences or (runs.read_config(reward_dir).get("dataset_name") if reward_dir else None)
    scores_pairs = preferences is not None and sampler.roles.has_reward_model
    comparison = evaluation.compare(samples)
    result = EvalResult(
        **vars(comparison),  # the comparison's fields, flat, beside where it was run
        output_dir=str(output_dir),
        ppo_dir=str(run_dir),  # the result's field keeps its name (report, pipeline)
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
