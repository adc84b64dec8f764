"""A run folder's recorded options (``rlhf_config.yaml``) and the paths in them that survive a move.

Run folders move (a whole ``runs/`` copied to another disk, a run mailed to a colleague): the paths a
run records (its inputs in ``rlhf_config.yaml``, its folders in ``metrics.json``) are written absolute
(:func:`absolute_paths`) beside the run's own ``output_dir``, and every reader re-resolves them
(:func:`read_run_config`, :meth:`rlhf.results.Result.read`): a path that lay inside the tree that moved
with the run is read at its new place (:func:`relocate`), anything outside it (a base model in
``/models``, a hub id) as recorded.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rlhf_core.errors import ConfigError

CONFIG_FILE = "rlhf_config.yaml"
ANCHOR = "output_dir"  # where the run folder was when it recorded its paths
# Options that may name a local file or folder (else a hub id or a built-in name, left as they are).
PATH_OPTIONS = (
    ANCHOR,
    "model_name_or_path",
    "tokenizer_name_or_path",
    "chat_template_path",
    "resume_from_checkpoint",
    "reward_model_path",
    "policy_init",
    "dataset_name",
    "recipe",
    "prompts",
)


def absolute_path(value: str) -> str:
    """An existing local file or folder as an absolute path; anything else (a hub id, ``builtin:``, an unset
    option's empty string, which ``Path`` would read as the working directory) unchanged."""
    return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value


def absolute_paths(options: Mapping[str, Any], keys: typing.Iterable[str] = PATH_OPTIONS) -> dict[str, Any]:
    """``options`` with each of ``keys`` that names a local file or folder made absolute (at write time).

    Relative to the working directory they meant something only there; absolute, with the run's own
    ``output_dir`` beside them, :func:`relocate` can find them again after the tree moved.
    """
    out = dict(options)
    for key in keys:
        if isinstance(out.get(key), str):
            out[key] = absolute_path(out[key])
    return out


def _moved(recorded: Path, current: Path) -> tuple[Path, Path] | None:
    """(old root, new root) of the move that took the folder ``recorded`` to ``current``: both paths
    without the trailing parts they share (``/a/runs/x/ppo`` -> ``/b/runs/x/ppo``: ``/a`` -> ``/b``)."""
    if recorded == current:
        return None
    old, new = recorded.parts, current.parts
    shared = 0
    while shared < min(len(old), len(new)) - 1 and old[-1 - shared] == new[-1 - shared]:
        shared += 1
    return Path(*old[: len(old) - shared]), Path(*new[: len(new) - shared])


def relocate(value: str, recorded: str | Path, current: str | Path) -> str:
    """A path recorded by a run folder that was at ``recorded`` and is now at ``current``.

    A path inside the tree that moved (the part of ``recorded`` that ``current`` does not share) is
    read at its new place when it is there, or when the old place is gone too (so an error names
    where it should be); a path outside it, a relative one (recorded by an older version) or a hub
    id is returned as recorded.
    """
    path = Path(value)
    moved = _moved(Path(recorded), Path(current).resolve()) if path.is_absolute() else None
    if moved is None or not path.is_relative_to(moved[0]):
        return value
    there = moved[1] / path.relative_to(moved[0])
    return str(there) if there.exists() or not path.exists() else value


def relocated(record: Mapping[str, Any], folder: str | Path, keys: typing.Iterable[str]) -> dict[str, Any]:
    """``record`` (read from ``folder``) with its path ``keys`` re-resolved where the run folder moved."""
    out = dict(record)
    recorded = out.get(ANCHOR)
    if not isinstance(recorded, str) or not Path(recorded).is_absolute():
        return out  # an older run folder that recorded relative paths: read as recorded
    for key in keys:
        if isinstance(out.get(key), str):
            out[key] = relocate(out[key], recorded, folder)
    return out


def read_run_config(folder: str | Path) -> dict[str, Any]:
    """The resolved options a run folder was made with (``rlhf_config.yaml``), its paths where they are now."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: not a run folder of this toolkit (no {CONFIG_FILE})")
    options = yaml.safe_load(path.read_text())
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: not a resolved config (a mapping of options)")
    return relocated(options, folder, PATH_OPTIONS)
