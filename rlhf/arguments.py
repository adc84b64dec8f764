"""The options every stage shares, declared once: the model, the data, resuming, precision, checkpoints.

Each training stage reads three dataclasses, gathered in a :class:`StageConfig`: :class:`ModelArguments`
(a TRL ``ModelConfig`` with one ``quantization`` key), :class:`DataArguments`, and the stage's training
config, declared beside the stage (``rlhf/stages/<stage>.py``; the RL stage's in ``rlhf/ppo/config.py``).
Those on TRL's trainers subclass TRL's config and :class:`TrainerOptions`, which adds only what is new
here: precision picked for the hardware, frequent checkpoints, ``--resume``, FSDP in words. Parsing
them is :mod:`rlhf.config`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
import trl

from rlhf import sharding
from rlhf_core.convert import parse_columns
from rlhf_core.errors import ConfigError
from rlhf_core.options import closest

C = TypeVar("C")


@dataclass
class ModelArguments(trl.ModelConfig):
    """The base model, its quantization and the LoRA adapter trained on it.

    Defaults are QLoRA-shaped: a LoRA on every linear layer. ``dtype`` and
    ``bnb_4bit_compute_dtype`` left unset follow the training precision (bf16 on Ampere or newer,
    fp16 on older GPUs such as the T4, fp32 on CPU).
    """

    help_title: ClassVar[str] = "model (the base model, its quantization and the LoRA adapter trained on it)"
    # TRL's ModelConfig options `--help` describes (the rest are listed by name only).
    help_shown: ClassVar[tuple[str, ...]] = (
        "model_revision",
        "attn_implementation",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_modules_to_save",
        "use_rslora",
        "use_dora",
        "bnb_4bit_quant_type",
    )

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The base model: a hub id, a local folder or builtin:tiny. rlhf reward and rlhf ppo start from "
            "the merged SFT model (<sft output_dir>/merged)."
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "Quantization of the base weights: '4bit' (NF4, QLoRA), '8bit' or 'none'. Unset: taken from "
            "TRL's load_in_4bit/load_in_8bit, else 'none'.",
            "choices": ["4bit", "8bit", "none"],
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the base weights that are not quantized. Unset: follows the training precision "
            "(bfloat16 with bf16, float16 with fp16, else float32). 'auto' takes the checkpoint's dtype.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the 4-bit matmuls. Unset: the resolved `dtype` (float32 when that is 'auto').",
            "choices": ["bfloat16", "float16", "float32"],
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True,
        metadata={"help": "Double quantization of the 4-bit scales (QLoRA's default; saves ~0.4 bit/parameter)."},
    )
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (QLoRA when quantized)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get a LoRA: names, or 'all-linear' for every linear layer but the head."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; unset: the one saved with the model."}
    )

    def __post_init__(self) -> None:
        wanted = "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None
        if self.quantization is None:
            self.quantization = wanted or "none"
        elif wanted is not None and wanted != self.quantization:
            raise ConfigError(f"quantization: {self.quantization!r} contradicts load_in_{wanted}: true")
        self.load_in_4bit = self.quantization == "4bit"
        self.load_in_8bit = self.quantization == "8bit"
        super().__post_init__()


@dataclass
class DataArguments:
    """Where the data comes from and how it is split."""

    help_title: ClassVar[str] = "data (where the rows come from and how they are read and split)"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset: a local .json/.jsonl/.csv/.parquet file, a folder (files, or datasets.save_to_disk), "
            "a hub id, or a built-in set such as 'builtin:tiny/sft'."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on, when it exists."})
    eval_split_size: float = field(
        default=0.05,
        metadata={
            "help": "When the dataset has no test split, the fraction of rows held out for evaluation "
            "(deterministic, by `seed`); 0 disables evaluation."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation rows."})
    overlong: str = field(
        default="drop",
        metadata={
            "help": "Rows longer than max_length: 'drop' them (and say how many), 'truncate' them (SFT only), "
            "or stop with an 'error' naming them.",
            "choices": ["drop", "truncate", "error"],
        },
    )
    columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Columns under other names, as COLUMN=NAME pairs (space- or comma-separated): e.g. "
            "chosen=better,rejected=worse reads 'better' as chosen. Alpaca rows (instruction, input, output) and "
            "ShareGPT rows (conversations of from/value turns) are converted without it; docs/data.md lists the "
            "columns."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):  # a YAML mapping: {chosen: better}
            self.columns = [f"{ours}={theirs}" for ours, theirs in self.columns.items()]
        elif isinstance(self.columns, str):
            self.columns = [self.columns]
        parse_columns(self.columns or [])  # a malformed or unknown column is refused now, before anything loads

    @property
    def column_map(self) -> dict[str, str]:
        """``columns`` as ``{our column: the dataset's name}``."""
        return parse_columns(self.columns or [])


@dataclass
class RunOptions:
    """Options every training stage shares, beyond TRL's: resuming, checkpoints kept, precision for the hardware.

    The stages on TRL's trainers take them through :class:`TrainerOptions`, which comes before TRL's class
    in their bases, so these replace TRL's fields of the same name; the RL stage's config has no TRL base.
    ``save_steps`` is not one of them: TRL's counts optimizer steps, the RL stage's iterations.
    """

    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last checkpoint in output_dir (checkpoints are saved every save_steps)."},
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision. Unset: on if the GPU has it."})
    fp16: bool | None = field(default=None, metadata={"help": "fp16 mixed precision. Unset: on for GPUs without bf16."})


def auto_precision(config: Any) -> None:
    """bf16/fp16 left unset: bf16 on GPUs that have it (Ampere+), fp16 on older GPUs (T4), fp32 on CPU."""
    cuda = torch.cuda.is_available() and not getattr(config, "use_cpu", False)
    native_bf16 = cuda and torch.cuda.get_device_capability()[0] >= 8
    if config.bf16 is None:
        config.bf16 = bool(native_bf16) and not config.fp16
    if config.fp16 is None:
        config.fp16 = bool(cuda) and not config.bf16
    if not cuda and getattr(config, "dataloader_pin_memory", False):
        config.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns


def _check_bf16(config: Any) -> None:
    """bf16 asked for where it cannot run: one line saying what to set (transformers' own check is vaguer)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if not (config.bf16 or config.bf16_full_eval) or config.use_cpu:
        return
    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return
    if torch.cuda.is_available():
        raise ConfigError(
            f"bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16 (that needs Ampere or newer): "
            "set fp16: true, or leave bf16 unset to pick the precision from the hardware"
        )
    raise ConfigError(
        "bf16: true needs a GPU with bf16 (Ampere or newer) and none is visible: leave bf16 unset (fp32 on CPU), "
        "or add use_cpu: true for bf16 autocast on the CPU (slow)"
    )


# Trackers whose package name differs from their report_to name.
_TRACKER_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit"}


def check_trackers(report_to: list[str], library: str = "transformers") -> None:
    """Every tracker in report_to is one the logging library knows and is installed (it would fail after loading).

    ``library``: ``transformers`` for the stages on TRL's trainers (transformers' callbacks log), ``accelerate``
    for the RL stage (``accelerate.tracking``'s trackers log); they know partly different trackers.
    """
    if library == "accelerate":
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        known, installed = list(LOGGER_TYPE_TO_CLASS), [str(t) for t in get_available_trackers()]
    else:
        from transformers.integrations import get_available_reporting_integrations
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        known, installed = list(INTEGRATION_TO_CALLBACK), get_available_reporting_integrations()
    for name in report_to:
        if name not in known:
            raise ConfigError(
                f"report_to: {name!r} is not a tracker; one of {sorted(known)}, or none{closest(name, known)}"
            )
        if name not in installed:
            raise ConfigError(
                f"report_to: {name} is not installed: `pip install {_TRACKER_PACKAGES.get(name, name)}`, or report to "
                f"{' or '.join([*installed, 'none'])}"
            )


@dataclass
class TrainerOptions(RunOptions):
    """What the stages on TRL's trainers change in TRL's configs: precision for the hardware, frequent checkpoints.

    Listed before TRL's class in each config's bases, so these fields and :class:`RunOptions`' replace TRL's
    of the same name.
    """

    # TRL's and transformers' training options `--help` describes (the ones recipes set); the rest are
    # listed by name only, and described by --help_all.
    help_shown: ClassVar[tuple[str, ...]] = (
        "output_dir",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "optim",
        "max_length",
        "gradient_checkpointing",
        "eval_strategy",
        "eval_steps",
        "eval_on_start",
        "logging_steps",
        "seed",
        "report_to",
        "use_cpu",
        "trust_remote_code",
    )

    save_steps: float = field(
        default=200, metadata={"help": "Checkpoint every N steps (what --resume continues from)."}
    )
    fsdp: str = field(
        default="",
        metadata={
            "help": "'full_shard auto_wrap': shard the base and the adapter over the job's GPUs with FSDP2 "
            "(torchrun --nproc_per_node N; Accelerate shards on GPUs only), each decoder layer a unit, a 4-bit base "
            "stored in the compute dtype (FSDP-QLoRA); fsdp_config takes transformers' FSDP options. Empty: "
            "data-parallel, every process holds the whole model."
        },
    )

    def __post_init__(self) -> None:
        auto_precision(self)
        _check_bf16(self)
        words = self.fsdp
        if words:
            self.fsdp_config = sharding.trainer_fsdp_options(words, self.fsdp_config)
            self.fsdp = True  # type: ignore[assignment]  # transformers' form; the words are in fsdp_config now
        super().__post_init__()  # TRL's config, next in the MRO
        self.fsdp = words  # what a re-run's --config reads
        check_trackers(self.report_to)


def merge_base_field() -> Any:
    """The ``merge_base`` option of every stage that merges an adapter (``rlhf sft``, ``rlhf export``)."""
    return field(
        default="dequantized",
        metadata={
            "help": "Weights the adapter is merged into. 'dequantized': the 4-bit weights it was trained on, "
            "dequantized (reproduces the trained model). 'original': the full-precision checkpoint (a different "
            "model for a 4-bit run; the merge check reports by how much). Unquantized runs merge into the original.",
            "choices": ["dequantized", "original"],
        },
    )


@dataclass
class StageConfig(Generic[C]):
    """A training stage's parsed configuration: the base model and its adapter, the data, the stage's options.

    What ``rlhf <stage>`` parses from a recipe and flags, and what the pipeline builds once per recipe
    and hands to the stage's ``run`` (setting its paths as typed fields, not as flags to parse again).
    """

    model: ModelArguments
    data: DataArguments
    training: C
