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

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from trl import RewardTrainer

from rlhf import data, models, runs
from rlhf.config import DataArguments, ModelArguments, RewardConfig, StageConfig, parse
from rlhf.core.errors import ConfigError
from rlhf.results import Distribution, LengthReport, PairAccuracy, RewardResult

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
    gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
    accuracy = PairAccuracy(
        accuracy=sum(g > 0 for g in gaps) / len(gaps),
        pairs=len(gaps),
        mean_gap=statistics.fmean(gaps),
        chosen=_distribution(chosen),
        rejected=_distribution(rejected),
    )
    return accuracy, [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected, strict=True)]


def _tokenize(dataset: Dataset, tokenizer: Any, name: str) -> Dataset:
    return dataset.map(
        data.preference_ids,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        desc=f"tokenizing {name} pairs",
    )


def build(
    model_args: ModelArguments, data_args: DataArguments, config: RewardConfig
) -> tuple[RewardTrainer, dict[str, LengthReport]]:
    """The reward trainer for a parsed config (tokenized, length-checked pairs), and the length reports."""
    if data_args.overlong == "truncate":
        raise ConfigError("overlong: truncate would cut off the token the reward is read at; use drop or error")
    if not model_args.use_peft and model_args.quantization != "none":
        raise ConfigError("quantized base weights cannot be trained directly: keep use_peft: true (QLoRA)")
    models.resolve_dtypes(model_args, config)
    tokenizer = models.load_tokenizer(model_args, config.trust_remote_code)
    train_rows, eval_rows = data.load_splits(data_args, "preference", seed=config.seed)
    reports: dict[str, LengthReport] = {}
    splits: dict[str, Dataset | None] = {"train": train_rows, "eval": eval_rows}
    for name, rows in splits.items():
        if rows is not None:
            splits[name], reports[name] = data.enforce_max_length(
                _tokenize(rows, tokenizer, name),
                config.max_length,
                data_args.overlong,
                f"reward {name} data",
                columns=("chosen_ids", "rejected_ids"),
            )
    train_set, eval_set = splits["train"], splits["eval"]
    if eval_set is None:
        config.eval_strategy = "no"
    model = models.load_reward_backbone(model_args, tokenizer, config.trust_remote_code)
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args, "SEQ_CLS"),
    )
    models.match_trainable_dtype(trainer.model, config.bf16 or config.fp16)
    return trainer, reports


def run(config: StageConfig[RewardConfig]) -> RewardResult:
    """Run the reward stage; the result is also written to ``output_dir/metrics.json``."""
    model_args, data_args, options = config.model, config.data, config.training
    started = time.time()
    checkpoint = runs.start("reward", options.output_dir, options.resume)
    trainer, reports = build(model_args, data_args, options)
    runs.record_config("reward", options.output_dir, model_args, data_args, options)
    train_set, eval_set, tokenizer = trainer.train_dataset, trainer.eval_dataset, trainer.processing_class
    trained = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(options.output_dir)

    train_accuracy = [h["accuracy"] for h in trainer.state.log_history if "accuracy" in h]
    held_out, scores = (
        evaluate_pairs(trainer.model, eval_set, tokenizer.pad_token_id, options.per_device_eval_batch_size)
        if eval_set is not None
        else (None, [])
    )
    result = RewardResult(
        output_dir=options.output_dir,
        train_loss=trained.training_loss,
        train_rows=len(train_set),
        length_policy=reports,
        global_steps=trainer.state.global_step,
        world_size=trainer.args.world_size,
        **runs.summarize_history(trainer.state.log_history),
        final_train_accuracy=train_accuracy[-1] if train_accuracy else None,
        eval=held_out,
        runtime_seconds=round(time.time() - started, 1),
    )
    if trainer.is_world_process_zero():
        runs.write_history(options.output_dir, trainer.state.log_history)
        if eval_set is not None:
            with (Path(options.output_dir) / SCORES_FILE).open("w") as handle:
                for row in scores:
                    handle.write(json.dumps(row) + "\n")
        result.write(options.output_dir)
    return result


def main(argv: Sequence[str] | None = None) -> RewardResult:
    """``rlhf reward``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf reward", description=DESCRIPTION)))
