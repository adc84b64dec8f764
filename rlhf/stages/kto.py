"""`rlhf kto`: Kahneman-Tversky Optimization on thumbs with TRL's KTOTrainer.

Reads what ``rlhf feedback export --format kto`` writes (prompt/completion/label: a thumbs up or down
on one answer, no pairing needed) and trains a LoRA on the SFT model against that model itself
(adapters disabled) as the reference. Thumbs are rarely balanced; unless the recipe sets them, the
loss weights of desirable and undesirable answers are set so that both labels weigh the same in total
(:func:`balanced_weights`). What it shares with ``rlhf dpo`` is in :mod:`rlhf.stages.offline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import trl
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import KTOTrainer

from rlhf import data
from rlhf.arguments import DataArguments, ModelArguments, StageConfig, TrainerOptions
from rlhf.config import parse
from rlhf.results import LabelBalance, OfflineResult
from rlhf.stages import offline
from rlhf_core.errors import DataError


@dataclass
class KTOConfig(TrainerOptions, trl.KTOConfig):
    """TRL's KTOConfig; the weights of desirable and undesirable answers follow the data unless given."""

    help_shown: ClassVar[tuple[str, ...]] = (*TrainerOptions.help_shown, "beta")

    desirable_weight: float | None = field(
        default=None,
        metadata={
            "help": "Loss weight of desirable (thumbs-up) answers. Unset: with undesirable_weight, chosen so both "
            "labels weigh the same in total (the KTO paper's ratio 1 to 4/3, at its low end)."
        },
    )
    undesirable_weight: float | None = field(
        default=None,
        metadata={"help": "Loss weight of thumbs-down answers. Unset: see desirable_weight."},
    )


CONFIG_TYPES = [ModelArguments, DataArguments, KTOConfig]
DESCRIPTION = "KTO: train a LoRA policy on thumbs (prompt/completion/label), the SFT model as reference."


def balanced_weights(
    desirable: int, undesirable: int, desirable_weight: float | None, undesirable_weight: float | None
) -> tuple[float, float]:
    """Loss weights of the two labels: as given, or (unset) the rarer label up-weighted so both totals match.

    The KTO paper (and TRL's check) wants ``desirable_weight * desirable / (undesirable_weight *
    undesirable)`` between 1 and 4/3; equal totals sit at 1. A weight given alone is kept and the other
    one balances it.
    """
    if desirable == 0 or undesirable == 0:
        raise DataError(
            f"KTO needs answers of both labels; the data has {desirable} desirable and {undesirable} undesirable"
        )
    if desirable_weight is not None and undesirable_weight is not None:
        return desirable_weight, undesirable_weight
    if desirable_weight is not None:
        return desirable_weight, desirable_weight * desirable / undesirable
    if undesirable_weight is not None:
        return undesirable_weight * undesirable / desirable, undesirable_weight
    return (max(1.0, undesirable / desirable), max(1.0, desirable / undesirable))


def _settle_weights(config: KTOConfig, train: Dataset) -> LabelBalance:
    labels = train["label"]
    desirable = sum(bool(label) for label in labels)
    weights = balanced_weights(desirable, len(labels) - desirable, config.desirable_weight, config.undesirable_weight)
    config.desirable_weight, config.undesirable_weight = weights
    return LabelBalance(desirable, len(labels) - desirable, *weights)


def _lengths(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    return {"completion_ids": data.conversation_ids(tokenizer, row["prompt"], row["completion"])}


METHOD = offline.Method(
    stage="kto",
    rows="unpaired",
    columns=("prompt", "completion", "label"),
    trainer=KTOTrainer,
    lengths=_lengths,
    prepare=_settle_weights,
)


def run(config: StageConfig[KTOConfig]) -> OfflineResult:
    """Run the KTO stage; the result is also written to ``output_dir/metrics.json``."""
    return offline.run(METHOD, config)


def main(argv: Sequence[str] | None = None) -> OfflineResult:
    """``rlhf kto``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf kto", description=DESCRIPTION)))
