"""`rlhf dpo`: Direct Preference Optimization on preference pairs with TRL's DPOTrainer.

Reads the pairs ``rlhf feedback export --format pairs`` writes (or any prompt/chosen/rejected data)
and trains a LoRA on the SFT model against that model itself (adapters disabled) as the reference:
one stage, no reward model, no sampling. What it shares with ``rlhf kto`` is in
:mod:`rlhf.stages.offline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import trl
from transformers import PreTrainedTokenizerBase
from trl import DPOTrainer

from rlhf import data
from rlhf.arguments import DataArguments, ModelArguments, StageConfig, TrainerOptions
from rlhf.config import parse
from rlhf.results import OfflineResult
from rlhf.stages import offline


@dataclass
class DPOConfig(TrainerOptions, trl.DPOConfig):
    """TRL's DPOConfig with our precision, checkpoint and resume options (the reference: adapters disabled)."""

    help_shown: ClassVar[tuple[str, ...]] = (*TrainerOptions.help_shown, "beta", "loss_type")


CONFIG_TYPES = [ModelArguments, DataArguments, DPOConfig]
DESCRIPTION = "DPO: train a LoRA policy on preference pairs (prompt/chosen/rejected), the SFT model as reference."


def _lengths(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    ids = data.preference_ids(row, tokenizer)
    return {"chosen_ids": ids["chosen_ids"], "rejected_ids": ids["rejected_ids"]}


METHOD = offline.Method(
    stage="dpo",
    rows="preference",
    columns=("prompt", "chosen", "rejected"),
    trainer=DPOTrainer,
    lengths=_lengths,
)


def run(config: StageConfig[DPOConfig]) -> OfflineResult:
    """Run the DPO stage; the result is also written to ``output_dir/metrics.json``."""
    return offline.run(METHOD, config)


def main(argv: Sequence[str] | None = None) -> OfflineResult:
    """``rlhf dpo``: parse the recipe and flags, then :func:`run`."""
    return run(StageConfig(*parse(CONFIG_TYPES, argv, prog="rlhf dpo", description=DESCRIPTION)))
