"""The report's figures (matplotlib, Agg): each saved as a PNG into the report's folder, its name returned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rlhf.results import Calibration, Evaluation, PolicyScores, RoundResult


def series(history: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    points = [(h[x], h[key]) for h in history if key in h and h[key] is not None and x in h]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(ax: Any, history: Sequence[dict[str, Any]], key: str, *style: str, label: str | None = None) -> None:
    """Plot a logged series if the run logged it (no empty legend entries)."""
    xs, ys = series(history, key)
    if xs:
        ax.plot(xs, ys, *style, label=label)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_sft(history: list[dict[str, Any]], out: Path) -> str | None:
    if not history:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    _plot(ax, history, "loss", label="train loss")
    _plot(ax, history, "eval_loss", "o-", label="eval loss")
    ax.set(title="SFT loss", xlabel="step", ylabel="loss (assistant tokens)")
    ax.legend()
    return _save(fig, out / "sft_loss.png")


def plot_reward(history: list[dict[str, Any]], out: Path) -> str | None:
    if not history:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    _plot(left, history, "loss", label="train")
    _plot(left, history, "eval_loss", "o-", label="eval")
    left.set(title="Reward model loss", xlabel="step")
    left.legend()
    _plot(right, history, "accuracy", label="train")
    _plot(right, history, "eval_accuracy", "o-", label="eval")
    right.axhline(0.5, color="grey", linestyle=":", label="chance")
    right.set(title="Pairwise accuracy", xlabel="step", ylim=(0.3, 1.02))
    right.legend()
    return _save(fig, out / "reward.png")


def plot_ppo(history: list[dict[str, Any]], out: Path) -> str | None:
    if not history:
        return None
    panels = [
        ("objective/score", "reward-model score"),
        ("gold/score", "gold-judge score"),
        ("objective/kl", "KL to SFT (nats/answer)"),
        ("response/length", "response length (tokens)"),
    ]
    panels = [(k, t) for k, t in panels if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        _plot(ax, history, key)
        ax.set(title=title, xlabel="PPO iteration")
    return _save(fig, out / "ppo.png")


REWARD_SPREAD = ("reward/ensemble_std", "reward/group_std", "reward/zero_std_groups")


def _reward_keys(history: Sequence[dict[str, Any]]) -> list[str]:
    """The reward's logged parts: a reward ensemble's members (``reward/member_0`` ...) in member order, and the
    components (``reward/model``, each reward function) when there are several to tell apart."""
    found = {k for h in history for k in h if k.startswith("reward/") and k not in REWARD_SPREAD}
    members = sorted((k for k in found if k.startswith("reward/member_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    parts = sorted(found - set(members))
    return members + (parts if len(parts) > 1 else [])


def diagnostics(history: Sequence[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The RL diagnostics a run logged, as (panel title, [(metric key, label)]): only what is in the history."""
    rewards = [(k, k.removeprefix("reward/")) for k in _reward_keys(history)]
    panels = [
        ("reward", [("objective/score", "trained on"), *rewards]),
        ("reward ensemble disagreement", [("reward/ensemble_std", "members' std")]),
        ("KL to the reference (nats/answer)", [("objective/kl", "KL")]),
        ("approx KL, update vs rollout", [("policy/approx_kl", "approx KL")]),
        ("policy entropy (nats/token)", [("policy/entropy", "entropy")]),
        ("clip fraction", [("policy/clipfrac", "policy"), ("loss/value_clipfrac", "value")]),
        ("value explained variance", [("value/explained_variance", "explained variance")]),
        ("value loss", [("loss/value_loss", "value loss")]),
        ("learning rate", [("lr", "policy")]),
    ]
    present = {k for h in history for k in h}
    kept = [(title, [(k, label) for k, label in keys if k in present]) for title, keys in panels]
    return [(title, keys) for title, keys in kept if keys]


def plot_diagnostics(history: list[dict[str, Any]], out: Path) -> str | None:
    panels = diagnostics(history)
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.9 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        for key, label in keys:
            _plot(ax, history, key, label=label)
        ax.set(title=title, xlabel="RL iteration")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, out / "rl_diagnostics.png")


ROUND_CURVES = (
    ("reward_accuracy_on_policy", "previous RM on this policy's answers", "RM accuracy (gold-ranked pairs)"),
    ("reward_held_out_accuracy", "RM on held-out pairs", "RM accuracy (gold-ranked pairs)"),
)


def plot_rounds(rounds: Sequence[RoundResult], out: Path) -> str | None:
    """Per round: the reward model's accuracy where the policy samples and on held-out pairs; RL's scores."""
    if len(rounds) < 2:
        return None
    xs = [r.round for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for key, label, title in ROUND_CURVES:
        points = [(x, getattr(r, key)) for x, r in zip(xs, rounds, strict=True) if getattr(r, key) is not None]
        if points:
            left.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
        left.set(title=title, xlabel="round", xticks=xs)
    left.legend(fontsize=7)
    for key, label in (("objective/score", "RM score (that round's RM)"), ("gold/score", "gold score")):
        points = [(x, r.policy[key]) for x, r in zip(xs, rounds, strict=True) if key in r.policy]
        if points:
            right.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    right.set(title="RL, end of each round", xlabel="round", xticks=xs)
    right.legend(fontsize=7)
    return _save(fig, out / "rounds.png")


def policies(evaluation: Evaluation) -> tuple[PolicyScores, PolicyScores]:
    return evaluation.sft, evaluation.ppo


def plot_comparison(evaluation: Evaluation, out: Path) -> str | None:
    keys = [k for k in ("gold", "reward") if getattr(evaluation.sft, k) is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys, strict=True):
        values = [getattr(p, key) for p in policies(evaluation)]
        errors = [1.96 * getattr(p, f"{key}_stderr") for p in policies(evaluation)]
        ax.bar(["SFT", "PPO"], values, yerr=errors, capsize=6, color=["#9aa5b1", "#2f855a"])
        ax.set(title=f"{'gold-judge' if key == 'gold' else 'reward-model'} score (95% CI)")
    return _save(fig, out / "comparison.png")


def plot_calibration(reward_model: Calibration | None, out: Path) -> str | None:
    if reward_model is None or not reward_model.bins:
        return None
    fig, ax = plt.subplots(figsize=(4, 3.4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.plot([b.claimed for b in reward_model.bins], [b.observed for b in reward_model.bins], "o-", label="reward model")
    ax.set(title=f"Calibration (ECE {reward_model.ece:.3f})", xlabel="claimed P(chosen)", ylabel="observed")
    ax.legend()
    return _save(fig, out / "calibration.png")
