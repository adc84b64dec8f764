"""The training reward of online RL: the reward model, Python reward functions, or a weighted sum.

Reward functions are named in the recipe as ``"package.module:function"`` and called as TRL's
GRPOTrainer calls its ``reward_funcs``: with keyword arguments ``prompts``, ``completions`` (plain
strings, or ``[{"role": "assistant", "content": ...}]`` when the prompts are chat messages) and
``completion_ids`` (token ids up to and including EOS, no padding), plus ``**kwargs`` a function should accept
and may ignore. A function returns one float per completion (``None`` for "does not apply", counted
as 0 here and logged). So a function written for TRL runs here unchanged.

Each component's raw mean is logged on its own (``reward/<name>``); the trainer works on the
weighted sum.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_core.errors import ConfigError

RewardFunction = Callable[..., Sequence[float | None]]
MODEL = "model"  # the name the reward model's component is logged under


def load_function(spec: str, key: str) -> Callable[..., Any]:
    """``"package.module:function"`` to the function, with an error naming the option on any failure."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"{key}: {spec!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{key}: cannot import {module_name!r} for {spec!r}: {error}") from error
    function: object = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{key}: {module_name!r} has no function {name!r}")
    return function


def completions(prompts: Sequence[Any], texts: Sequence[str]) -> list[Any]:
    """Completions in TRL's format: a one-message assistant turn for chat prompts, else the text."""
    return [
        [{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts, strict=True)
    ]


@dataclass(frozen=True)
class RewardFunctions:
    """Named Python reward functions with their weights, called as TRL calls ``reward_funcs``."""

    names: tuple[str, ...]
    functions: tuple[RewardFunction, ...]
    weights: tuple[float, ...]

    @classmethod
    def load(cls, specs: Sequence[str], weights: Sequence[float] | None) -> RewardFunctions:
        if weights is not None and len(weights) != len(specs):
            raise ConfigError(f"reward_weights: {len(weights)} weights for {len(specs)} reward_funcs")
        names = tuple(spec.partition(":")[2] or spec for spec in specs)
        if len(set(names)) != len(names) or MODEL in names:
            raise ConfigError(f"reward_funcs: the functions' names must differ from each other and from {MODEL!r}")
        functions = tuple(load_function(spec, "reward_funcs") for spec in specs)
        return cls(names, functions, tuple(weights) if weights is not None else (1.0,) * len(specs))

    def __call__(
        self, prompts: Sequence[Any], texts: Sequence[str], completion_ids: Sequence[Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        """Each function's raw rewards (B,), by name; a wrong length or a non-finite value names function and row."""
        out: dict[str, torch.Tensor] = {}
        for name, function in zip(self.names, self.functions, strict=True):
            values = list(
                function(
                    prompts=list(prompts),
                    completions=completions(prompts, texts),
                    completion_ids=[list(ids) for ids in completion_ids],
                )
            )
            if len(values) != len(texts):
                raise ValueError(
                    f"reward function {name!r} returned {len(values)} rewards for {len(texts)} completions"
                )
            for row, value in enumerate(values):
                if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                    raise ValueError(
                        f"reward function {name!r} returned {value!r} for row {row} "
                        f"(completion {texts[row][:60]!r}): rewards must be finite numbers or None"
                    )
            out[name] = torch.tensor([0.0 if v is None else float(v) for v in values])
        return out


def total(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The weighted sum of reward components (B,)."""
    if not parts:
        raise ValueError("no reward: give a reward model, reward functions, or both")
    return torch.stack([weights[name] * value for name, value in parts.items()]).sum(0)
