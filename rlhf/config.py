"""Typed configuration for every stage: YAML recipes set defaults, command-line flags override them.

Each stage reads a few dataclasses: :class:`ModelArguments` (a TRL ``ModelConfig`` with one
``quantization`` key), :class:`DataArguments`, and the stage's training config, which subclasses
TRL's (``SFTConfig``, ``RewardConfig``) and adds only what is new. A recipe is a flat YAML
mapping whose keys are the fields of those dataclasses, so ``rlhf sft --help`` lists every key a
recipe may hold, and the resolved config a run writes can be passed back as ``--config``.

Why our own parsing: TRL's scripts ask its parser for the "remaining strings", so a misspelt
``learning_rat: 1e-4`` trains silently with the default. Here an unknown key, in the YAML or on the
command line, is an error that names it (and the closest known key), and values that argparse
never sees (YAML defaults) are checked against their field's type and choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import shutil
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import trl
import yaml
from transformers import HfArgumentParser

from rlhf import sharding
from rlhf.results import absolute_paths
from rlhf_core.errors import ConfigError
from rlhf_core.rows import parse_columns

C = TypeVar("C")

# ----------------------------------------------------------------------------------------------
# Dataclasses


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
    """Options every training stage shares, beyond TRL's."""

    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last checkpoint in output_dir (checkpoints are saved every save_steps)."},
    )


def _auto_precision(config: Any) -> None:
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


def _check_trackers(report_to: list[str], library: str = "transformers") -> None:
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
                f"report_to: {name!r} is not a tracker; one of {sorted(known)}, or none{_closest(name, known)}"
            )
        if name not in installed:
            raise ConfigError(
                f"report_to: {name} is not installed: `pip install {_TRACKER_PACKAGES.get(name, name)}`, or report to "
                f"{' or '.join([*installed, 'none'])}"
            )


@dataclass
class _TrainerOptions(RunOptions):
    """What the sft and reward stages change in TRL's configs: precision for the hardware, frequent checkpoints.

    Listed before TRL's class in each config's bases, so these fields replace TRL's of the same name.
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

    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision. Unset: on if the GPU has it."})
    fp16: bool | None = field(default=None, metadata={"help": "fp16 mixed precision. Unset: on for GPUs without bf16."})
    save_steps: float = field(
        default=200, metadata={"help": "Checkpoint every N steps (what --resume continues from)."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
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
        _auto_precision(self)
        _check_bf16(self)
        words = self.fsdp
        if words:
            self.fsdp_config = sharding.trainer_fsdp_options(words, self.fsdp_config)
            self.fsdp = True  # type: ignore[assignment]  # transformers' form; the words are in fsdp_config now
        super().__post_init__()  # TRL's config, next in the MRO
        self.fsdp = words  # what a re-run's --config reads
        _check_trackers(self.report_to)


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
class SFTConfig(_TrainerOptions, trl.SFTConfig):
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


@dataclass
class RewardConfig(_TrainerOptions, trl.RewardConfig):
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


@dataclass
class DPOConfig(_TrainerOptions, trl.DPOConfig):
    """TRL's DPOConfig with our precision, checkpoint and resume options (the reference: adapters disabled)."""

    help_shown: ClassVar[tuple[str, ...]] = (*_TrainerOptions.help_shown, "beta", "loss_type")


@dataclass
class KTOConfig(_TrainerOptions, trl.KTOConfig):
    """TRL's KTOConfig; the weights of desirable and undesirable answers follow the data unless given."""

    help_shown: ClassVar[tuple[str, ...]] = (*_TrainerOptions.help_shown, "beta")

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


@dataclass
class StageConfig(Generic[C]):
    """A training stage's parsed configuration: the base model and its adapter, the data, the stage's options.

    What ``rlhf <stage>`` parses from a recipe and flags, and what the pipeline builds once per recipe
    and hands to the stage's ``run`` (setting its paths as typed fields, not as flags to parse again).
    """

    model: ModelArguments
    data: DataArguments
    training: C


# ----------------------------------------------------------------------------------------------
# Parsing


def _closest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key set twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is set twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_recipe(path: str) -> dict[str, Any]:
    recipe = Path(path)
    if not recipe.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(recipe.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of option: value, got {type(data).__name__}")
    return data


def _scalar_types(annotation: Any) -> tuple[type, ...] | None:
    """The scalar types a field accepts, or None when it is not a plain scalar field (lists, dicts, ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
    else:
        parts = [annotation]
    if all(p in (int, float, bool, str) for p in parts):
        accepted = set(parts)
        if float in accepted:
            accepted.add(int)
        return tuple(accepted)
    return None


def _converts(kind: type, text: str) -> bool:
    if kind is bool:
        return text.lower() in ("true", "false", "yes", "no", "1", "0")
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _check_recipe_value(f: dataclasses.Field, annotation: Any, value: Any, where: str) -> None:
    """Type and choice checks for a YAML value: argparse converts and checks only command-line strings."""
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {f.name}: {value!r} is not one of {list(choices)}")
    accepted = _scalar_types(annotation)
    if accepted is None:
        return
    if isinstance(value, str):
        if str in accepted or any(_converts(t, value) for t in accepted):
            return  # argparse converts string defaults with the field's type
        raise ConfigError(
            f"{where}: {f.name}: expected {'/'.join(sorted(t.__name__ for t in accepted))}, got {value!r}"
        )
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        raise ConfigError(
            f"{where}: {f.name}: expected {'/'.join(sorted(t.__name__ for t in accepted))}, got {value!r}"
        )


# ----------------------------------------------------------------------------------------------
# Help: this toolkit's options first, grouped, in plain text; TRL's and transformers' others by name


def plain(text: str) -> str:
    """Help text without markup: Markdown links and code spans, Sphinx roles and tags, as one paragraph."""
    text = re.sub(r"\[([^\]]+)\]\((\S+?)\)", r"\1 (\2)", text)
    text = re.sub(r":(?:class|func|meth|mod|attr|obj|ref|data|exc|paramref):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"</?(?:Tip|tip|br|p|code|b|i|em|strong)\b[^<>]*>", "", text)
    return " ".join(text.replace("`", "").replace("%%", "%").split())


def _declared_by(kind: type, name: str) -> type:
    """The class whose own annotations declare a field (the first in the MRO: an override is its own)."""
    return next(c for c in kind.__mro__ if name in inspect.get_annotations(c))


def _ours(kind: type) -> bool:
    return kind.__module__.split(".")[0] == "rlhf"


def _library(owner: type, kind: type) -> str:
    """`TRL's SFTConfig`: the library and public class a field comes from (a private base: its public subclass)."""
    top = owner.__module__.split(".")[0]
    if owner.__name__.startswith("_"):
        owner = next(c for c in kind.__mro__ if c.__module__.split(".")[0] == top and not c.__name__.startswith("_"))
    library = {"trl": "TRL's", "transformers": "transformers'"}.get(top, f"{top}'s")
    return f"{library} {owner.__name__}"


@dataclass(frozen=True)
class HelpSection:
    """A titled group of options in `--help`: described in full, or (`by_name`) listed by name only."""

    title: str
    names: tuple[str, ...]
    by_name: bool = False


def help_sections(dataclass_types: Sequence[type], stage: str, full: bool = False) -> list[HelpSection]:
    """The stage's options grouped for `--help`: model, data, training, the stage's own, then the rest.

    Described in full: this toolkit's options (declared by its classes) and the few of TRL's and
    transformers' that recipes set (each class's ``help_shown``); the others are listed by name per
    library class, or described too with ``full`` (``--help_all``).
    """
    sections: list[HelpSection] = []
    others: dict[str, list[str]] = {}
    for kind in dataclass_types:
        names = [f.name for f in dataclasses.fields(kind) if f.init]
        owner = {name: _declared_by(kind, name) for name in names}
        shown: tuple[str, ...] = getattr(kind, "help_shown", ())
        if hasattr(kind, "help_title"):
            sections.append(HelpSection(kind.help_title, tuple(n for n in names if _ours(owner[n]) or n in shown)))
        elif all(_ours(owner[n]) for n in names):
            sections.append(HelpSection(stage, tuple(names)))
        else:
            inherited = [n for n in names if _ours(owner[n]) and owner[n] is not kind]
            training = [n for n in shown if n in owner and n not in inherited] + inherited
            sections.append(HelpSection("training (the trainer options recipes set, and resuming)", tuple(training)))
            own = tuple(n for n in names if owner[n] is kind)
            if own:
                sections.append(HelpSection(f"{stage} (this stage's own options)", own))
        described = {n for section in sections for n in section.names}
        for name in names:
            if name not in described:
                others.setdefault(_library(owner[name], kind), []).append(name)
    sections += [
        HelpSection(f"other options of {library}", tuple(sorted(n)), not full) for library, n in others.items()
    ]
    return sections


def _metavar(action: argparse.Action) -> str:
    if action.choices is not None:
        listed = ",".join(str(c) for c in action.choices)
        return f"{{{listed}}}" if len(listed) <= 40 else "NAME"
    kind = {"string_to_bool": "true|false", "int": "N", "float": "X", "str": "TEXT"}.get(
        getattr(action.type, "__name__", ""), "VALUE"
    )
    if action.nargs == "?":
        return f"[{kind}]"
    return f"{kind} [{kind} ...]" if action.nargs == "+" else kind


def _shown_default(value: Any) -> str:
    if value is None or value is argparse.SUPPRESS or value == "" or value == []:
        return ""
    value = getattr(value, "value", value)  # enums (IntervalStrategy, ...)
    return " (default: " + (" ".join(map(str, value)) if isinstance(value, list) else str(value)) + ")"


class _Parser(HfArgumentParser):
    """The stages' parser: one-line errors, and a `--help` that puts this toolkit's options first."""

    def error(self, message: str) -> typing.NoReturn:  # argparse would print the whole usage and exit
        raise ConfigError(f"{message}; see {self.prog} --help")

    def format_help(self, full: bool = False) -> str:
        width = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
        column = 34
        actions: dict[str, argparse.Action] = {}
        for action in self._actions:
            actions.setdefault(action.dest, action)  # the option itself, not its --no_ complement
        stage = self.prog.removeprefix("rlhf ")
        lines = [
            f"usage: {self.prog} [--config RECIPE.yaml] [--OPTION VALUE ...]",
            "",
            *textwrap.wrap(plain(self.description or ""), width),
            "",
            *textwrap.wrap(
                "Every option is a key of the YAML recipe (--config) and a flag, which wins over the recipe. "
                "--option_name and --option-name are the same; a true/false option also takes --no_NAME to turn "
                f"it off. {self.prog} --help_all describes every option.",
                width,
            ),
        ]
        for section in help_sections(self.dataclass_types, stage, full):
            lines += ["", f"{section.title}:"]
            if section.by_name:
                lines += textwrap.wrap(", ".join(section.names), width, initial_indent="  ", subsequent_indent="  ")
                continue
            for name in section.names:
                action = actions[name]
                head = f"  --{name} {_metavar(action)}"
                text = plain(action.help or "") + _shown_default(action.default)
                if action.choices is not None and _metavar(action) == "NAME":
                    text += " Choices: " + ", ".join(str(c) for c in action.choices) + "."
                body = textwrap.wrap(text, width - column) or [""]
                if len(head) < column - 1:
                    lines.append(head.ljust(column) + body[0])
                    body = body[1:]
                else:
                    lines.append(head)
                lines += [" " * column + line for line in body]
        return "\n".join(lines) + "\n"


class _HelpAll(argparse.Action):
    """``--help_all``: `--help` with every option described, TRL's and transformers' too."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        assert isinstance(parser, _Parser)
        print(parser.format_help(full=True), end="")
        parser.exit()


def make_parser(dataclass_types: Sequence[type], prog: str, description: str) -> HfArgumentParser:
    """The parser of one stage; shared by `rlhf <stage>` and the stage's `main(argv)`."""
    parser = _Parser(list(dataclass_types), prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML recipe: a mapping of the options below.")
    parser.add_argument("--help_all", "--help-all", action=_HelpAll, help="Describe every option.")
    return parser


def parse(
    dataclass_types: Sequence[type], argv: Sequence[str] | None, *, prog: str, description: str
) -> tuple[Any, ...]:
    """Parse ``--config recipe.yaml`` plus command-line overrides into the given dataclasses.

    Raises :class:`ConfigError` for an unknown key (naming the file), an unknown flag, or a value of
    the wrong type or outside its choices.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(dataclass_types, prog, description)
    known = sorted(a.dest for a in parser._actions if a.dest not in ("help", "help_all", "config"))
    retired = {k: v for t in dataclass_types for k, v in getattr(t, "retired_keys", {}).items()}

    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML recipe")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    where = config_path or "command line"
    if config_path is not None:
        recipe = _load_recipe(config_path)
        # HfArgumentParser narrows Field.type in place, so the declared annotations come from the classes.
        fields = {
            f.name: (f, typing.get_type_hints(t)[f.name])
            for t in dataclass_types
            for f in dataclasses.fields(t)
            if f.init
        }
        for key, value in recipe.items():
            if key in retired:
                raise ConfigError(f"{config_path}: '{key}' is not an option: {retired[key]}")
            if key not in known:
                raise ConfigError(f"{config_path}: unknown key '{key}'{_closest(str(key), known)}")
            _check_recipe_value(*fields[key], value, config_path)
        parser.set_defaults(**recipe)

    flags = [a for a in argv if a.startswith("--")]
    for flag in flags:
        name = flag[2:].split("=", 1)[0].replace("-", "_")  # --run-dir and --run_dir are the same option
        bare = name[3:] if name.startswith("no_") else name
        if name in retired:
            raise ConfigError(f"--{name} is not an option: {retired[name]}")
        if name not in known and bare not in known and name not in ("help", "help_all"):
            raise ConfigError(f"unknown option '--{name}'{_closest(name, known)}; see --help")

    try:
        outputs = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where}: {error}") from error
    *instances, remaining = outputs
    instances = [i for i in instances if dataclasses.is_dataclass(i)]
    if remaining:
        raise ConfigError(f"unexpected arguments: {' '.join(remaining)}")
    return tuple(instances)


def from_options(dataclass_types: Sequence[type], options: dict[str, Any]) -> tuple[Any, ...]:
    """Rebuild a run's configs from its resolved options (``rlhf_config.yaml``), each from its own keys."""
    out = []
    for kind in dataclass_types:
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        out.append(kind(**{k: v for k, v in options.items() if k in names}))
    return tuple(out)


def resolved_dict(*instances: Any) -> dict[str, Any]:
    """The flat option mapping of parsed configs, suitable to pass back as ``--config``."""
    out: dict[str, Any] = {}
    for instance in instances:
        values = instance.to_dict() if hasattr(instance, "to_dict") else dataclasses.asdict(instance)
        init_fields = {f.name for f in dataclasses.fields(instance) if f.init}
        for key, value in values.items():
            if key not in init_fields:
                continue
            if key.endswith("_token"):
                # TrainingArguments.to_dict writes every *_token field as a placeholder ("<EOS_TOKEN>"),
                # which is not what ran and breaks a re-run; write the value, except the hub's secrets
                value = None if "hub" in key else getattr(instance, key)
            out[key] = value.value if hasattr(value, "value") and not isinstance(value, (str, int, float)) else value
    return out


def write_resolved_config(path: Path, stage: str, *instances: Any) -> None:
    """Write every option the run used (defaults included) as a flat YAML recipe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Resolved config of `rlhf {stage}`: every option this run used. Re-run with --config {path.name}.\n"
    path.write_text(header + yaml.safe_dump(absolute_paths(resolved_dict(*instances)), sort_keys=True))
