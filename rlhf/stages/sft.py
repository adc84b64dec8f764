"""`rlhf sft`: supervised instruction tuning of a LoRA (QLoRA) adapter with TRL's SFTTrainer.

TRL does the training: chat template, loss on assistant tokens only (or on the completion for
prompt/completion data), paged 8-bit AdamW when the recipe's ``optim`` asks for it, checkpoints.
This module adds what a run needs around it: validated data, rows over ``max_length`` handled by
an explicit policy instead of silent truncation, a resolved config and ``metrics.json`` in the run
folder, ``--resume``, and optionally the adapter merged into its base and checked against the model
as trained (:mod:`rlhf.merging`); the reward and PPO stages start from that merged model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trl
from trl import SFTTrainer

from rlhf import data, merging, models
from rlhf.arguments import DataArguments, ModelArguments, StageConfig, TrainerOptions, merge_base_field
from rlhf.config import parse
from rlhf.models import MERGED_DIR
from rlhf.results import LengthReport, SFTResult
from rlhf.stages import trainer_stage
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(TrainerOptions, trl.SFTConfig):
    """TRL's SFTConfig, plus merging the adapter into a full-precision copy of the base."""

    assistant_only_loss: bool | None = field(
        default=None,
        metadata={
            "help": "Loss on assistant tokens only (needs a chat template with generation markers; TRL swaps one in "
            "for known models). Unset: on for conversational data, off for plain text."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "Also write output_dir/merged: the adapter merged into a full-precision copy of the base. The "
            "reward and PPO stages start from it (PPO keeps it as the frozen reference)."
        },
    )
    merged_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the merged model.", "choices": ["bfloat16", "float16", "float32"]},
    )
    merge_base: str = merge_base_field()


CONFIG_TYPES = [ModelArguments, DataArguments, SFTConfig]
DESCRIPTION = "Supervised fine-tuning: train a LoRA adapter on chat (or prompt/completion, or text) data."


class _SFTTrainer(SFTTrainer):
    """SFTTrainer that applies the recipe's ``overlong`` policy instead of silently truncating."""

    def __init__(self, *args: Any, overlong: str, **kwargs: Any) -> None:
        self.overlong = overlong
        self.length_reports: dict[str, LengthReport] = {}
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):  # type: ignore[override]
        if packing:  # packing chunks sequences to max_length itself: nothing is lost
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        max_length, args.max_length = args.max_length, None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        finally:
            args.max_length = max_length
        dataset, report = data.enforce_max_length(dataset, max_length, self.overlong, f"sft {dataset_name} data")
        self.length_reports[dataset_name] = report
        return dataset


def _is_conversational(row: dict[str, Any]) -> bool:
    return "messages" in row or isinstance(row.get("prompt"), list)


def build(model_args: ModelArguments, data_args: DataArguments, config: SFTConfig) -> _SFTTrainer:
    """The SFT trainer for a parsed config: validated data, the (quantized) base, the LoRA."""
    if not model_args.use_peft and model_args.quantization != "none":
        raise ConfigError("quantized base weights cannot be trained directly: keep use_peft: true (QLoRA)")
    trainer_stage.setup(model_args, config, "sft")
    train_set, eval_set = data.load_splits(data_args, "sft", seed=config.seed)
    if config.assistant_only_loss is None:
        config.assistant_only_loss = _is_conversational(train_set[0])
    if eval_set is None:
        config.eval_strategy = "no"
    tokenizer = models.load_tokenizer(model_args, config.trust_remote_code)
    model = models.load_causal_lm(model_args, tokenizer, config.trust_remote_code)
    return trainer_stage.make_trainer(
        _SFTTrainer,
        model,
        model_args,
        config,
        "CAUSAL_LM",
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        overlong=data_args.overlong,
    )


def _result(trained: trainer_stage.Trained[_SFTTrainer], lengths: dict[str, LengthReport]) -> SFTResult:
    trainer = trained.trainer
    return SFTResult(
        **trained.figures,
        eval_rows=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        loss_tokens_per_epoch=sum(
            sum(1 for label in row["labels"] if label != -100)
            for row in trainer.train_dataset.select_columns(["labels"])
        ),
        length_policy=lengths,
        trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    )


def run(config: StageConfig[SFTConfig]) -> SFTResult:
    """Run the SFT stage; the result is also written to ``output_dir/metrics.json``."""
    model_args, options = config.model, config.training

    def merge(result: SFTResult, main_process: bool) -> SFTResult:
        """The adapter merged into the base it was trained on, checked against the model as trained."""
        if not (main_process and options.merge_adapter):
            return result
        if not model_args.use_peft:
            raise ConfigError("merge_adapter: the SFT run trained no adapter (use_peft: false)")
        merged = Path(options.output_dir) / MERGED_DIR
        check = merging.merge_and_verify(
            model_args, options.output_dir, merged, options.merged_dtype, options.merge_base
        )
        return replace(result, merged_model=str(merged), merge=check)

    def build_trainer() -> tuple[_SFTTrainer, dict[str, LengthReport]]:
        trainer = build(model_args, config.data, options)
        return trainer, trainer.length_reports  # the length policy's reports, filled as the trainer prepared its data

    return trainer_stage.run("sft", config, build_trainer, _result, finish=merge)


def main(argv: Sequence[str] | None = None) -> SFTResult:
    """``rlhf sft``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf sft", description=DESCRIPTION)))
