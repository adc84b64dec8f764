"""`rlhf reward`: a reward model trained on preference pairs with TRL's RewardTrainer.

The model is a one-output sequence classifier on the SFT model (usually the merged SFT output),
with a SEQ_CLS LoRA so the score head is saved with the adapter. Pairs are tokenized here with
:func:`rlhf.data.preference_ids` rather than inside TRL, because the PPO stage must score its
rollouts with exactly the same rendering. Beyond TRL's loss and accuracy, the run reports held-out
pairwise accuracy and the distribution of rewards of chosen and rejected answers (accuracy alone
hides a reward model whose scores are squashed or shifted), and writes each held-out pair's
scores to ``eval_scores.jsonl``.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from trl import RewardTrainer

from rlhf import data, ensemble, models, runs
from rlhf.arguments import DataArguments, ModelArguments, StageConfig, TrainerOptions
from rlhf.config import parse
from rlhf.results import Distribution, EnsembleSummary, LengthReport, PairAccuracy, RewardResult
from rlhf.stages import trainer_stage
from rlhf_core.errors import ConfigError


@dataclass
class RewardConfig(TrainerOptions, trl.RewardConfig):
    """TRL's RewardConfig with our precision, checkpoint and resume options, and ensembles."""

    ensemble_size: int = field(
        default=1,
        metadata={
            "help": "Train this many reward models (each its own LoRA and score head, seed + i, and a bootstrap "
            "resample of the pairs) into output_dir/member-<i>, listed in output_dir/ensemble.json; RL stages "
            "combine them with reward_aggregation. 1: one reward model in output_dir."
        },
    )
    ensemble_bootstrap: bool = field(
        default=True,
        metadata={"help": "Each ensemble member trains on a resample (with replacement) of the training pairs."},
    )


CONFIG_TYPES = [ModelArguments, DataArguments, RewardConfig]
DESCRIPTION = "Reward modelling: train a scalar reward head + LoRA on preference pairs (prompt/chosen/rejected)."
SCORES_FILE = "eval_scores.jsonl"


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 32
) -> list[float]:
    """Reward of each token sequence (read by the model at its last non-pad token)."""
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    scores: list[float] = []
    for start in tqdm(
        range(0, len(sequences), batch_size), desc="scoring", leave=False, disable=len(sequences) <= batch_size
    ):
        ids, mask = data.right_pad(sequences[start : start + batch_size], pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores.extend(logits[:, 0].float().cpu().tolist())
    model.train(was_training)
    return scores


def _distribution(values: list[float]) -> Distribution:
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return Distribution(
        mean=statistics.fmean(values),
        std=statistics.pstdev(values),
        p10=quantile(0.1),
        p50=quantile(0.5),
        p90=quantile(0.9),
    )


def evaluate_pairs(
    model: PreTrainedModel, pairs: Dataset, pad_token_id: int, batch_size: int
) -> tuple[PairAccuracy, list[dict[str, float]]]:
    """Held-out pairwise accuracy and the reward distributions of chosen and rejected answers."""
    chosen = score_sequences(model, pairs["chosen_ids"], pad_token_id, batch_size)
    rejected = score_sequences(model, pairs["rejected_ids"], pad_token_id, batch_size)
    rows = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected, strict=True)]
    return _pair_accuracy(chosen, rejected), rows


def _pair_accuracy(chosen: list[float], rejected: list[float]) -> PairAccuracy:
    gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return PairAccuracy(
        accuracy=sum(g > 0 for g in gaps) / len(gaps),
        pairs=len(gaps),
        mean_gap=statistics.fmean(gaps),
        chosen=_distribution(chosen),
        rejected=_distribution(rejected),
    )


def _tokenize(dataset: Dataset, tokenizer: Any, name: str) -> Dataset:
    return dataset.map(
        data.preference_ids,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        desc=f"tokenizing {name} pairs",
    )


def build(
    model_args: ModelArguments, data_args: DataArguments, config: RewardConfig, resample: int | None = None
) -> tuple[RewardTrainer, dict[str, LengthReport]]:
    """The reward trainer for a parsed config (tokenized, length-checked pairs), and the length reports.

    ``resample``: train on a bootstrap resample of the training pairs drawn with this seed (an
    ensemble member's share); the held-out pairs stay as they are.
    """
    if data_args.overlong == "truncate":
        raise ConfigError("overlong: truncate would cut off the token the reward is read at; use drop or error")
    if not model_args.use_peft and model_args.quantization != "none":
        raise ConfigError("quantized base weights cannot be trained directly: keep use_peft: true (QLoRA)")
    trainer_stage.setup(model_args, config, "reward")
    tokenizer = models.load_tokenizer(model_args, config.trust_remote_code)
    train_rows, eval_rows = data.load_splits(data_args, "preference", seed=config.seed)
    if resample is not None:
        draw = random.Random(resample)
        train_rows = train_rows.select([draw.randrange(len(train_rows)) for _ in range(len(train_rows))])

    def check(rows: Dataset, name: str) -> tuple[Dataset, LengthReport]:
        return data.enforce_max_length(
            _tokenize(rows, tokenizer, name),
            config.max_length,
            data_args.overlong,
            f"reward {name} data",
            columns=("chosen_ids", "rejected_ids"),
        )

    train_set, eval_set, reports = trainer_stage.within_length({"train": train_rows, "eval": eval_rows}, config, check)
    model = models.load_reward_backbone(model_args, tokenizer, config.trust_remote_code)
    trainer = trainer_stage.make_trainer(
        RewardTrainer,
        model,
        model_args,
        config,
        "SEQ_CLS",
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
    )
    return trainer, reports


def run(config: StageConfig[RewardConfig]) -> RewardResult:
    """Run the reward stage (one model, or an ensemble); the result is also written to ``output_dir/metrics.json``."""
    size = config.training.ensemble_size
    if size < 1:
        raise ConfigError(f"ensemble_size: {size}; it must be at least 1 (1: one reward model)")
    return _train(config) if size == 1 else _train_ensemble(config)


def _train_ensemble(config: StageConfig[RewardConfig]) -> RewardResult:
    """``ensemble_size`` reward models, one after another, each a complete reward run in ``member-<i>``.

    One at a time, so the stage's peak memory is that of one reward model. A member that finished
    (its ``metrics.json`` is there) is kept on a re-run and the one that was interrupted resumes, so
    ``--resume`` continues an ensemble where it stopped. Member ``i`` trains with ``seed + i`` on a
    bootstrap resample of the pairs (``ensemble_bootstrap``), and its scores on the held-out answers
    give the scale it is standardised by (:mod:`rlhf.ensemble`).
    """
    options = config.training
    started = time.time()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs.record_config("reward", options.output_dir, config.model, config.data, options)
    results: list[RewardResult] = []
    for i in range(options.ensemble_size):
        folder = out / f"member-{i}"
        done = RewardResult.read_if_present(folder)
        if done is None:
            member = copy.deepcopy(options)
            member.output_dir, member.seed, member.ensemble_size = str(folder), options.seed + i, 1
            member.resume = options.resume and runs.last_checkpoint(folder) is not None
            resample = options.seed + i if options.ensemble_bootstrap else None
            done = _train(StageConfig(config.model, config.data, member), resample)
        results.append(done)
    scores = [_held_out_scores(Path(r.output_dir)) for r in results]
    scales = [ensemble.Member(r.output_dir, *_scale(s)) for r, s in zip(results, scores, strict=True)]
    if runs.is_main_process():
        ensemble.write_manifest(out, scales)
    result = RewardResult(
        output_dir=options.output_dir,
        train_loss=statistics.fmean(r.train_loss for r in results),
        train_rows=sum(r.train_rows for r in results),
        length_policy=results[0].length_policy,
        global_steps=sum(r.global_steps for r in results),
        world_size=results[0].world_size,
        eval=_ensemble_accuracy(scores, scales) if all(scores) else None,
        ensemble=EnsembleSummary(
            size=len(results),
            bootstrap=options.ensemble_bootstrap,
            members=[Path(r.output_dir).name for r in results],
            member_accuracy=[r.eval.accuracy if r.eval is not None else None for r in results],
            disagreement=_disagreement(scores, scales) if all(scores) else None,
        ),
        runtime_seconds=round(time.time() - started, 1),
    )
    if runs.is_main_process():
        result.write(options.output_dir)
    return result


def _held_out_scores(folder: Path) -> list[dict[str, float]]:
    """A reward run's scores of each held-out pair (``eval_scores.jsonl``), empty without held-out pairs."""
    path = folder / SCORES_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _scale(scores: list[dict[str, float]]) -> tuple[float, float]:
    """Mean and standard deviation of a member's scores over the held-out answers (0 and 1 without any)."""
    values = [row[side] for row in scores for side in ("chosen", "rejected")]
    if len(values) < 2:
        return 0.0, 1.0
    return statistics.fmean(values), statistics.pstdev(values) or 1.0


def _standardised(scores: list[list[dict[str, float]]], scales: list[ensemble.Member], side: str) -> torch.Tensor:
    raw = torch.tensor([[row[side] for row in member] for member in scores], dtype=torch.float64)
    return ensemble.standardise(raw, scales)


def _ensemble_accuracy(scores: list[list[dict[str, float]]], scales: list[ensemble.Member]) -> PairAccuracy:
    """Held-out accuracy of the members' mean standardised score (the ensemble as ``mean`` aggregates it)."""
    chosen = _standardised(scores, scales, "chosen").mean(0).tolist()
    rejected = _standardised(scores, scales, "rejected").mean(0).tolist()
    return _pair_accuracy(chosen, rejected)


def _disagreement(scores: list[list[dict[str, float]]], scales: list[ensemble.Member]) -> float:
    """Mean standard deviation across members of the standardised scores of the held-out answers."""
    both = torch.cat([_standardised(scores, scales, side) for side in ("chosen", "rejected")], 1)
    return float(ensemble.disagreement(both).mean())


def _train(config: StageConfig[RewardConfig], resample: int | None = None) -> RewardResult:
    """One reward model: train, save, evaluate on the held-out pairs, write the run folder."""
    model_args, data_args, options = config.model, config.data, config.training

    def result(trained: trainer_stage.Trained[RewardTrainer], reports: dict[str, LengthReport]) -> RewardResult:
        trainer = trained.trainer
        eval_set, pad_token_id = trainer.eval_dataset, trainer.processing_class.pad_token_id
        train_accuracy = [h["accuracy"] for h in trainer.state.log_history if "accuracy" in h]
        held_out, scores = (
            evaluate_pairs(trainer.model, eval_set, pad_token_id, options.per_device_eval_batch_size)
            if eval_set is not None
            else (None, [])
        )
        if trained.main_process and eval_set is not None:
            with (Path(options.output_dir) / SCORES_FILE).open("w") as handle:
                for row in scores:
                    handle.write(json.dumps(row) + "\n")
        return RewardResult(
            **trained.figures,
            length_policy=reports,
            final_train_accuracy=train_accuracy[-1] if train_accuracy else None,
            eval=held_out,
        )

    # no evaluation after training: the held-out pairs are scored above, as the PPO stage scores rollouts
    return trainer_stage.run(
        "reward", config, lambda: build(model_args, data_args, options, resample), result, evaluate=False
    )


def main(argv: Sequence[str] | None = None) -> RewardResult:
    """``rlhf reward``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf reward", description=DESCRIPTION)))
