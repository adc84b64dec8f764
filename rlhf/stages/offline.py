"""Offline preference optimisation (``rlhf dpo``, ``rlhf kto``): TRL's trainers on the one QLoRA base.

What the two stages share. The policy is a LoRA on the SFT model (usually ``runs/<name>/sft/merged``,
loaded 4-bit as the reward and PPO stages load it); the reference is that same base with the adapter
disabled, which is what TRL's trainers do for a PEFT model given no ``ref_model``, so there is no
second copy of the model in memory. Around TRL this adds what every stage of the toolkit has:
validated rows (the same checks and file/row/field errors as the reward stage), rows over
``max_length`` dropped or refused by the recipe's ``overlong`` policy before TRL could truncate them,
``--resume``, the resolved config, and a typed result in ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer

from rlhf import data, models
from rlhf.arguments import DataArguments, ModelArguments, StageConfig
from rlhf.results import LabelBalance, LengthReport, OfflineResult
from rlhf.stages import trainer_stage
from rlhf_core.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One offline method: its stage name, row format, TRL trainer and the token columns its length policy reads."""

    stage: str
    rows: str  # the rlhf_core.rows check of its data ("preference", "unpaired")
    columns: tuple[str, ...]  # data columns TRL reads (others, such as a pair's margin, are dropped)
    trainer: Callable[..., Trainer]
    lengths: Callable[[dict[str, Any], PreTrainedTokenizerBase], dict[str, list[int]]]
    # settles what the config leaves to the data, before the trainer is built (KTO's label weights)
    prepare: Callable[[Any, Dataset], LabelBalance] | None = None


def _within_length(
    method: Method, rows: Dataset, tokenizer: PreTrainedTokenizerBase, config: Any, overlong: str, name: str
) -> tuple[Dataset, LengthReport]:
    """The rows as TRL reads them, those over ``max_length`` (prompt + answer, as rendered) dropped or refused."""
    if overlong == "truncate":
        raise ConfigError("overlong: truncate would cut answers off mid-sentence; use drop or error")
    measured = rows.map(method.lengths, fn_kwargs={"tokenizer": tokenizer}, desc=f"measuring {name}")
    token_columns = [c for c in measured.column_names if c not in rows.column_names]
    kept, report = data.enforce_max_length(measured, config.max_length, overlong, name, columns=tuple(token_columns))
    return kept.select_columns(list(method.columns)), report


def build(
    method: Method, model_args: ModelArguments, data_args: DataArguments, config: Any
) -> tuple[Trainer, dict[str, LengthReport], LabelBalance | None]:
    """The method's trainer on the (quantized) base with a fresh LoRA, its data's length reports and labels."""
    if not model_args.use_peft:
        raise ConfigError(f"{method.stage} trains a LoRA on the SFT model (the reference is that model): keep use_peft")
    trainer_stage.setup(model_args, config, method.stage)
    train_rows, eval_rows = data.load_splits(data_args, method.rows, seed=config.seed)  # bad rows: before any model
    tokenizer = models.load_tokenizer(model_args, config.trust_remote_code)

    def check(rows: Dataset, name: str) -> tuple[Dataset, LengthReport]:
        return _within_length(method, rows, tokenizer, config, data_args.overlong, f"{method.stage} {name} data")

    train_set, eval_set, reports = trainer_stage.within_length({"train": train_rows, "eval": eval_rows}, config, check)
    labels = method.prepare(config, train_set) if method.prepare is not None else None
    model = models.load_causal_lm(model_args, tokenizer, config.trust_remote_code)
    trainer = trainer_stage.make_trainer(
        method.trainer,
        model,
        model_args,
        config,
        "CAUSAL_LM",
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
    )
    return trainer, reports, labels


def _last(history: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """The last logged value of every metric under ``prefix`` (TRL's ``rewards/...``, ``eval_rewards/...``)."""
    out: dict[str, float] = {}
    for entry in history:
        out |= {k.removeprefix(prefix): float(v) for k, v in entry.items() if k.startswith(prefix)}
    return out


def run(method: Method, config: StageConfig[Any]) -> OfflineResult:
    """Train, then save the adapter and the result (also ``output_dir/metrics.json``)."""
    Built = tuple[dict[str, LengthReport], LabelBalance | None]

    def build_trainer() -> tuple[Trainer, Built]:
        trainer, reports, labels = build(method, config.model, config.data, config.training)
        return trainer, (reports, labels)

    def result(trained: trainer_stage.Trained[Trainer], built: Built) -> OfflineResult:
        history = trained.trainer.state.log_history
        return OfflineResult(
            stage=method.stage,
            **trained.figures,
            length_policy=built[0],
            rewards=_last([h for h in history if "loss" in h], "rewards/"),
            eval_rewards=_last(history, "eval_rewards/"),
            labels=built[1],
        )

    return trainer_stage.run(method.stage, config, build_trainer, result)
