"""Parsing a stage's options: YAML recipes set defaults, command-line flags override them.

The options themselves are dataclasses declared elsewhere: those every stage shares in
:mod:`rlhf.arguments`, each stage's own beside it (``rlhf/stages/<stage>.py``, the RL stage's in
``rlhf/ppo/config.py``). A recipe is a flat YAML mapping whose keys are the fields of those
dataclasses, so ``rlhf sft --help`` lists every key a recipe may hold, and the resolved config a run
writes can be passed back as ``--config``.

Built on transformers' ``HfArgumentParser`` (dataclass fields to flags, their types and choices),
not on TRL's ``TrlParser``, whose recipe loading this module replaces: TRL's scripts ask it for the
"remaining strings", so a misspelt ``learning_rat: 1e-4`` trains silently with the default, and its
YAML keeps the last of a key set twice. Here an unknown key, in the YAML or on the command line, is an
error that names it (and the closest known key), as are a key set twice and a key other trainers use
with another meaning (a config's ``retired_keys``); values that argparse never sees (YAML defaults)
are checked against their field's type and choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import shutil
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from rlhf.run_paths import absolute_paths
from rlhf_core.errors import ConfigError
from rlhf_core.options import closest

# ----------------------------------------------------------------------------------------------
# Parsing


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
                raise ConfigError(f"{config_path}: unknown key '{key}'{closest(str(key), known)}")
            _check_recipe_value(*fields[key], value, config_path)
        parser.set_defaults(**recipe)

    flags = [a for a in argv if a.startswith("--")]
    for flag in flags:
        name = flag[2:].split("=", 1)[0].replace("-", "_")  # --run-dir and --run_dir are the same option
        bare = name[3:] if name.startswith("no_") else name
        if name in retired:
            raise ConfigError(f"--{name} is not an option: {retired[name]}")
        if name not in known and bare not in known and name not in ("help", "help_all"):
            raise ConfigError(f"unknown option '--{name}'{closest(name, known)}; see --help")

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
