"""What each stage returns and writes to ``metrics.json``: typed results, read back typed.

A stage's ``run(config)`` returns one of these frozen dataclasses, and ``metrics.json`` in its run
folder is that result as JSON (:meth:`Result.write`). Whoever reads a stage's figures later (the
pipeline, ``rlhf export``'s model card, ``rlhf report``, the tests) reads them back with
:meth:`Result.read` into the same type, so a renamed or missing figure is a type error or a clear
message naming the file, not a ``KeyError`` three modules away.

Torch-free on purpose: the report and the pipeline's bookkeeping read results without loading a model.

Paths a result records (fields marked ``PATH``) are re-resolved where the run folder moved
(:mod:`rlhf.run_paths`).
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Self

from rlhf.run_paths import absolute_paths, relocated
from rlhf_core.errors import ConfigError

METRICS_FILE = "metrics.json"


PATH = {"path": True}  # field metadata: a result's field that names a local file or folder


def clean(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite floats become null (a loss that diverged reads as missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _build(kind: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as ``kind``: nested dataclasses, optionals, lists and dicts of them."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(inner, value, where)
    if origin is dict:
        _, item = typing.get_args(kind)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(kind)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(kind, type) and is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, found {value!r}")
        hints = typing.get_type_hints(kind)
        known = {f.name: f for f in fields(kind) if f.init}
        missing = [name for name, f in known.items() if name not in value and _required(f)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        # keys this version does not know (a newer run folder) are left out, not refused
        return kind(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items() if k in known})
    return value


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


@dataclass(frozen=True, kw_only=True)
class Result:
    """A stage's result: written as its run folder's ``metrics.json``, read back as the same type."""

    stage: str  # each stage's result sets its own name as the default

    def to_json(self) -> dict[str, Any]:
        return clean(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "metrics") -> Self:
        return _build(cls, data, where)  # type: ignore[no-any-return]

    @classmethod
    def path_fields(cls) -> list[str]:
        """The fields that name local files or folders (``metadata=PATH``): absolute on disk, relocated on read."""
        return [f.name for f in fields(cls) if f.metadata.get("path")]

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / METRICS_FILE
        record = absolute_paths(self.to_json(), self.path_fields())
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Self:
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            raise ConfigError(f"{folder}: no {METRICS_FILE}; did the stage finish?")
        return cls.from_json(relocated(json.loads(path.read_text()), folder, cls.path_fields()), str(path))

    @classmethod
    def read_if_present(cls, folder: str | Path) -> Self | None:
        return cls.read(folder) if (Path(folder) / METRICS_FILE).is_file() else None

    def numbers(self) -> dict[str, int | float]:
        """The top-level figures (counts, losses, seconds): what a model card lists."""
        values = self.to_json()
        return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# -- pieces -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthReport:
    """What the length policy did to one dataset."""

    rows: int
    overlong: int
    dropped: int
    truncated: int


@dataclass(frozen=True)
class MergeCheck:
    """How well a merged checkpoint reproduces the model as trained (all KLs in nats per token)."""

    merge_base: str
    tokens: int
    kl_vs_trained: float  # mean KL(trained || merged)
    max_kl_vs_trained: float
    argmax_agreement: float  # share of positions where both pick the same next token
    max_logit_diff_vs_trained: float
    max_logit_diff_vs_base: float  # > 0: the adapter changed the model
    kl_requantized: float | None  # KL(trained || merged loaded again quantized), for quantized runs


@dataclass(frozen=True)
class FullPrecisionLoad:
    """A quantized run's adapter loaded on its base in full precision (``PeftModel.from_pretrained`` on the
    unquantized base, what the adapter's ``base_model_name_or_path`` loads), against the model as trained
    (the base quantized as in training + the adapter). KLs in nats per token."""

    tokens: int  # teacher-forced positions of the probe conversations
    kl_vs_trained: float  # mean KL(trained || full-precision load)
    max_kl_vs_trained: float
    argmax_agreement: float  # share of those positions where both pick the same next token
    prompts: int  # probe prompts answered greedily by both
    greedy_tokens: int  # positions compared: per prompt, the longer of the two greedy answers
    greedy_tokens_changed: int  # positions where the two greedy answers differ (or one has ended)
    greedy_answers_changed: int  # prompts whose greedy answers differ at all


@dataclass(frozen=True)
class Distribution:
    mean: float
    std: float
    p10: float
    p50: float
    p90: float


@dataclass(frozen=True)
class PairAccuracy:
    """A reward model on held-out pairs: how often it ranks the chosen answer higher, and its score spread."""

    accuracy: float
    pairs: int
    mean_gap: float
    chosen: Distribution
    rejected: Distribution


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    pairs: int
    claimed: float  # mean sigmoid(r_chosen - r_rejected) in the bin
    observed: float  # share of those pairs the model ranks right


@dataclass(frozen=True)
class Calibration:
    """Pairwise accuracy, score gap and expected calibration error of a reward model."""

    accuracy: float
    mean_gap: float
    pairs: int
    ece: float
    bins: list[CalibrationBin]
    dataset: str | None = None


@dataclass(frozen=True)
class WinRate:
    """How often one policy beats another on paired samples (ties count half), with a bootstrap interval."""

    win_rate: float
    ci_low: float
    ci_high: float
    wins: float
    ties: float
    losses: float
    pairs: float


@dataclass(frozen=True)
class PolicyScores:
    """One policy's mean scores (with standard errors) on held-out prompts."""

    reward: float
    reward_stderr: float
    length: float
    length_stderr: float
    eos_rate: float
    gold: float | None = None  # the task's gold judge, where it has one
    gold_stderr: float | None = None


@dataclass(frozen=True)
class Difference:
    """The mean paired difference (trained policy minus SFT) of a score, with a normal 95% interval."""

    mean: float
    ci_low: float
    ci_high: float
    pairs: int


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """The SFT and the trained ("ppo") policies compared on the same held-out prompts and seeds."""

    sft: PolicyScores
    ppo: PolicyScores
    kl_ppo_to_sft: float  # nats per answer, PPO's own answers
    prompts: int
    seeds: list[int]
    win_rate: dict[str, WinRate]  # by judge: "reward", "gold"
    gain: dict[str, Difference] = field(default_factory=dict)  # by judge: trained minus SFT, paired
    # by policy, where the task has a gold judge: the share of gold-separated pairs of one prompt's answers
    # (over the seeds) that the reward model orders as the gold judge does (rlhf.selection.ranking_accuracy)
    reward_model_accuracy: dict[str, float | None] = field(default_factory=dict)


# -- stages -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainerResult(Result):
    """What the stages built on a transformers ``Trainer`` (sft, reward) report."""

    output_dir: str = field(metadata=PATH)
    train_loss: float
    train_rows: int
    global_steps: int
    world_size: int
    length_policy: dict[str, LengthReport]
    first_train_loss: float | None = None
    final_train_loss: float | None = None
    first_eval_loss: float | None = None
    eval_loss: float | None = None
    tokens_seen: int | None = None
    runtime_seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SFTResult(TrainerResult):
    stage: str = "sft"
    eval_rows: int = 0
    loss_tokens_per_epoch: int = 0
    trainable_parameters: int = 0
    merged_model: str | None = field(default=None, metadata=PATH)  # output_dir/merged, when the recipe merges
    merge: MergeCheck | None = None


@dataclass(frozen=True)
class EnsembleSummary:
    """A reward ensemble (``rlhf reward --ensemble_size K``): its members and how much they disagree."""

    size: int
    bootstrap: bool  # each member trained on a resample of the pairs
    members: list[str]  # sub-folders, each a reward run of its own
    member_accuracy: list[float | None]  # each member's held-out pair accuracy
    disagreement: float | None = None  # mean std across members of standardised held-out scores


@dataclass(frozen=True, kw_only=True)
class RewardResult(TrainerResult):
    stage: str = "reward"
    final_train_accuracy: float | None = None
    eval: PairAccuracy | None = None  # held-out pairs, when the data has a test split (an ensemble's: its mean)
    ensemble: EnsembleSummary | None = None


@dataclass(frozen=True)
class LabelBalance:
    """KTO's data: how many answers of each label, and the loss weights that balance them."""

    desirable: int
    undesirable: int
    desirable_weight: float
    undesirable_weight: float


@dataclass(frozen=True, kw_only=True)
class OfflineResult(TrainerResult):
    """``rlhf dpo`` or ``rlhf kto``: a policy adapter trained on preferences, without a reward model."""

    stage: str = "dpo"
    rewards: dict[str, float] = field(default_factory=dict)  # TRL's implicit rewards at the last training log
    eval_rewards: dict[str, float] = field(default_factory=dict)  # the same on the held-out rows
    labels: LabelBalance | None = None  # KTO


@dataclass(frozen=True)
class Diagnosis:
    """Signs of reward over-optimisation in an RL run's metrics (:func:`rlhf.overoptimisation.detect`)."""

    flags: list[str] = field(default_factory=list)  # one readable line per sign, as it stands at the end
    first_flagged: int | None = None  # the first iteration at which a sign showed
    peak_step: int | None = None  # where the smoothed conservative reward peaked
    peak_value: float | None = None
    conservative_metric: str | None = None  # which logged metric that reward is
    peak_checkpoint: str | None = None  # the saved checkpoint nearest to the peak (its folder name)


@dataclass(frozen=True, kw_only=True)
class PPOResult(Result):
    stage: str = "ppo"
    output_dir: str = field(metadata=PATH)
    steps: int
    advantage_estimator: str = "gae"  # gae (PPO), grpo, rloo or reinforce_pp
    reward_components: list[str] = field(default_factory=list)  # "model" and/or the reward functions' names
    judge_is_reward: bool = False  # the gold judge was also a training reward: gold scores are not held out
    final: dict[str, float] = field(default_factory=dict)  # logged metrics, mean of the last 10 iterations
    first_iteration: dict[str, float] = field(default_factory=dict)  # how well the critic starts
    eval: Evaluation | None = None  # on the recipe's held-out prompts, unless eval_max_prompts is 0
    diagnosis: Diagnosis | None = None  # over-optimisation signs and where the conservative reward peaked
    runtime_seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RoundResult(Result):
    """One round of ``rlhf pipeline --rounds``: what was annotated, how it was chosen, what it trained.

    ``reward_accuracy_on_policy`` is the *previous* round's reward model on the candidate sets the current
    policy sampled this round, ranked by the gold judge (before any of them was annotated): how well the
    reward model the policy was just optimised against still ranks the policy's own answers.
    """

    stage: str = "round"
    round: int
    items: int  # candidate sets put in the store in this round
    answers: int  # rankings collected on them (items x overlap)
    selected_by: str  # "sequential" (round 1: no reward model yet), "random" or "uncertainty"
    pool: int  # candidate sets the selector chose from (round 1: the items themselves)
    mean_uncertainty_pool: float | None = None  # of the previous reward model (rlhf.selection.uncertainty)
    mean_uncertainty_selected: float | None = None
    reward_accuracy_on_policy: float | None = None
    reward_accuracy_pairs: int = 0
    reward_held_out_accuracy: float | None = None  # this round's reward model, on its held-out pairs
    preference_pairs: int = 0  # the reward model's training pairs (every round's rankings so far)
    policy_steps: int = 0  # RL iterations in this round
    policy: dict[str, float] = field(default_factory=dict)  # this round's RL metrics, mean of its last iterations
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class EvalResult(Evaluation, Result):
    stage: str = "eval"
    output_dir: str = field(metadata=PATH)
    ppo_dir: str = field(metadata=PATH)
    prompts_dataset: str = field(metadata=PATH)
    rouge: dict[str, dict[str, float]] | None = None  # by policy, where the prompts have references
    reward_model: Calibration | None = None  # on the reward model's held-out preference pairs
    runtime_seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ExportResult(Result):
    stage: str = "export"
    output_dir: str = field(metadata=PATH)
    run_dir: str = field(metadata=PATH)
    base: str = field(metadata=PATH)  # what the adapter was trained on (a local folder, or a hub id)
    merged_dtype: str
    merge: MergeCheck
    hub_base: str | None = None  # the hub id at the root of the lineage, where there is one
    full_precision: FullPrecisionLoad | None = None  # a quantized run's adapter on the unquantized base
    pushed_to: str | None = None
    runtime_seconds: float = 0.0


STAGE_RESULTS: dict[str, type[Result]] = {
    "round": RoundResult,
    "sft": SFTResult,
    "reward": RewardResult,
    "dpo": OfflineResult,
    "kto": OfflineResult,
    "ppo": PPOResult,
    "eval": EvalResult,
    "export": ExportResult,
}


def read_stage(folder: str | Path) -> Result:
    """Any stage's result, typed by the ``stage`` it records (``rlhf export`` takes SFT and PPO runs)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {METRICS_FILE}; did the stage finish?")
    data = json.loads(path.read_text())
    kind = STAGE_RESULTS.get(str(data.get("stage")))
    if kind is None:
        raise ConfigError(f"{path}: unknown stage {data.get('stage')!r}")
    return kind.from_json(relocated(data, folder, kind.path_fields()), str(path))
