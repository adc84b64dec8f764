"""`rlhf report`: one self-contained HTML page that says at a glance whether a run worked, and what ran.

Reads a pipeline run folder (``sft/``, ``reward/``, ``ppo/``, ``eval/``; any may be missing; a run with
``--rounds`` keeps reward, ppo and the annotation steps in ``round-N/``, and gets a section with one
line and curve point per round) and writes ``report.html`` beside them, with every plot embedded in
the page (base64 PNG: the file can be moved or mailed alone) and also saved into ``report/``.
The verdict at the top compares the PPO and SFT policies on held-out prompts (gold judge where the
task has one, else the reward model); a box follows when the RL run's over-optimisation diagnosis
(:mod:`rlhf.overoptimisation`) flagged it, naming the checkpoint to export instead. Then the RL
diagnostics from the run's logged history (KL, entropy, clip fraction, value explained variance, the
reward and each ensemble member), and each stage's main hyperparameters from its ``rlhf_config.yaml``.
Model output is untrusted text: every string is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rlhf.results import (
    CONFIG_FILE,
    METRICS_FILE,
    Calibration,
    Diagnosis,
    EvalResult,
    Evaluation,
    PolicyScores,
    PPOResult,
    RewardResult,
    RoundResult,
    read_run_config,
    read_stage,
)
from rlhf_core.options import ArgumentParser

REPORT_FILE = "report.html"
PLOTS_DIR = "report"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _series(history: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    points = [(h[x], h[key]) for h in history if key in h and h[key] is not None and x in h]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(ax: Any, history: Sequence[dict[str, Any]], key: str, *style: str, label: str | None = None) -> None:
    """Plot a logged series if the run logged it (no empty legend entries)."""
    xs, ys = _series(history, key)
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


def diagnostics_table(history: Sequence[dict[str, Any]]) -> str:
    """Each diagnostic at the first and last iteration, and its range over the run."""
    rows = []
    for _, keys in diagnostics(history):
        for key, _label in keys:
            _, values = _series(history, key)
            if values:
                cells = [_e(key), *(f"{v:.4g}" for v in (values[0], values[-1], min(values), max(values)))]
                rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr><th>metric</th><th>first iteration</th><th>last iteration</th><th>min</th><th>max</th></tr>"
    return "<table>" + head + "".join(rows) + "</table>"


def round_folders(run_dir: Path) -> list[Path]:
    """A multi-round pipeline's ``round-N`` folders, in round order (none for a one-round run)."""
    found = [p for p in run_dir.glob("round-*") if p.is_dir() and p.name.removeprefix("round-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("round-")))


def read_rounds(run_dir: Path) -> list[RoundResult]:
    """The finished rounds of a multi-round pipeline folder, in order."""
    return [RoundResult.read(r) for r in round_folders(run_dir) if (r / METRICS_FILE).is_file()]


def stage_folder(run_dir: Path, stage: str) -> Path:
    """Where a pipeline folder keeps a stage: the last round's folder for the stages rounds repeat."""
    rounds = round_folders(run_dir)
    if rounds and (rounds[-1] / stage).is_dir():
        return rounds[-1] / stage
    return run_dir / stage


def rl_history(run_dir: Path) -> list[dict[str, Any]]:
    """The RL iterations' metrics, every round's in order (iterations numbered across rounds)."""
    folders = [r / "ppo" for r in round_folders(run_dir)] or [run_dir / "ppo"]
    history: list[dict[str, Any]] = []
    for number, folder in enumerate(folders, start=1):
        offset = history[-1]["step"] if history else 0
        history += [{**h, "step": h["step"] + offset, "round": number} for h in _jsonl(folder / "metrics.jsonl")]
    return history


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


def rounds_table(rounds: Sequence[RoundResult]) -> str:
    """One line per round: what was annotated, how it was chosen, what the reward model and RL reached."""
    head = (
        "<tr><th>round</th><th>selector</th><th>items (pool)</th><th>answers</th><th>mean uncertainty: "
        "pool → chosen</th><th>previous RM on this policy's answers</th><th>RM held-out accuracy</th>"
        "<th>pairs</th><th>RL iterations</th><th>RM score</th><th>gold</th><th>KL</th></tr>"
    )

    def number(value: float | None, form: str = "{:.2f}") -> str:
        return form.format(value) if value is not None else ""

    rows = []
    for r in rounds:
        accuracy = number(r.reward_accuracy_on_policy, "{:.1%}")
        cells = [
            str(r.round),
            _e(r.selected_by),
            f"{r.items} ({r.pool})",
            str(r.answers),
            f"{number(r.mean_uncertainty_pool)} → {number(r.mean_uncertainty_selected)}"
            if r.mean_uncertainty_pool is not None
            else "",
            f"{accuracy} ({r.reward_accuracy_pairs} pairs)" if accuracy else "",
            number(r.reward_held_out_accuracy, "{:.1%}"),
            str(r.preference_pairs),
            str(r.policy_steps),
            number(r.policy.get("objective/score")),
            number(r.policy.get("gold/score")),
            number(r.policy.get("objective/kl")),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _policies(evaluation: Evaluation) -> tuple[PolicyScores, PolicyScores]:
    return evaluation.sft, evaluation.ppo


def plot_comparison(evaluation: Evaluation, out: Path) -> str | None:
    keys = [k for k in ("gold", "reward") if getattr(evaluation.sft, k) is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys, strict=True):
        values = [getattr(p, key) for p in _policies(evaluation)]
        errors = [1.96 * getattr(p, f"{key}_stderr") for p in _policies(evaluation)]
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


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(plots: Path, name: str | None, alt: str) -> str:
    """A saved plot embedded in the page (base64 PNG), so the page needs no file beside it ("" for no plot)."""
    if name is None:
        return ""
    data = base64.b64encode((plots / name).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}'>"


def overoptimisation_box(diagnosis: Diagnosis | None, ppo_dir: Path) -> str:
    """A warning when the RL run showed signs of reward over-optimisation, naming the checkpoint to export.

    Empty when the diagnosis flagged nothing (or the run predates it).
    """
    if diagnosis is None or not diagnosis.flags:
        return ""
    parts = [
        "<div class='verdict warn'><b>Signs of reward over-optimisation</b>"
        + (f" from iteration {diagnosis.first_flagged}" if diagnosis.first_flagged is not None else "")
        + ":<ul>"
        + "".join(f"<li>{_e(flag)}</li>" for flag in diagnosis.flags)
        + "</ul>"
    ]
    if diagnosis.peak_step is not None:
        value = f" ({diagnosis.peak_value:.3f}, smoothed)" if diagnosis.peak_value is not None else ""
        parts.append(
            f"<p>The conservative reward ({_e(diagnosis.conservative_metric)}) peaked at iteration "
            f"{diagnosis.peak_step}{_e(value)}.</p>"
        )
    if diagnosis.peak_checkpoint is not None:
        command = (
            f"rlhf export --run_dir {shlex.quote(str(ppo_dir.resolve()))} --checkpoint {diagnosis.peak_checkpoint}"
        )
        parts.append(
            f"<p>The saved checkpoint nearest to that peak is {_e(diagnosis.peak_checkpoint)}; to ship the "
            f"policy from there instead of the final one:</p><pre>{_e(command)}</pre>"
        )
    elif diagnosis.peak_step is not None:
        parts.append("<p>No checkpoint was kept near the peak (save_steps, save_total_limit).</p>")
    return "".join(parts) + "</div>"


MODEL_OPTIONS = ("model_name_or_path", "dataset_name", "quantization", "lora_r", "lora_alpha", "seed")
TRAINER_OPTIONS = (
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_length",
)
# The options that shape each stage's result, in the order a reader wants them; the full set is the
# stage's rlhf_config.yaml.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sft": (*MODEL_OPTIONS, *TRAINER_OPTIONS, "assistant_only_loss"),
    "reward": (*MODEL_OPTIONS, *TRAINER_OPTIONS, "ensemble_size", "ensemble_bootstrap", "center_rewards_coefficient"),
    "dpo": (*MODEL_OPTIONS, *TRAINER_OPTIONS, "beta", "loss_type"),
    "kto": (*MODEL_OPTIONS, *TRAINER_OPTIONS, "beta", "desirable_weight", "undesirable_weight"),
    "ppo": (
        *MODEL_OPTIONS,
        "reward_model_path",
        "reward_funcs",
        "reward_weights",
        "reward_aggregation",
        "advantage_estimator",
        "steps",
        "rollout_batch_size",
        "num_generations",
        "mini_batch_size",
        "ppo_epochs",
        "learning_rate",
        "value_learning_rate",
        "kl_coef",
        "kl_estimator",
        "kl_penalty",
        "adaptive_kl_target",
        "cliprange",
        "cliprange_value",
        "gamma",
        "lam",
        "max_new_tokens",
        "temperature",
        "normalize_reward",
        "reward_clip",
        "missing_eos_penalty",
    ),
}


def _option(value: Any, run_dir: Path) -> str:
    """An option's value as shown: a path inside the run folder relative to it, lists comma-separated."""
    if isinstance(value, list):
        return ", ".join(_option(v, run_dir) for v in value)
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(run_dir):
        return str(Path(value).relative_to(run_dir))
    return str(value)


def hyperparameters(run_dir: Path) -> str:
    """Each stage's main options (from its ``rlhf_config.yaml``), one compact row per stage; unset ones left out."""
    rows = []
    for stage, keys in HYPERPARAMETERS.items():
        folder = stage_folder(run_dir, stage)
        if not (folder / CONFIG_FILE).is_file():
            continue
        options = read_run_config(folder)
        by_steps = (options.get("max_steps") or 0) > 0  # max_steps overrides the epochs
        shown = [
            f"<code>{_e(key)}</code>&nbsp;{_e(_option(options[key], run_dir.resolve()))}"
            for key in keys
            if options.get(key) not in (None, [])
            and not (key == "max_steps" and not by_steps)
            and not (key == "num_train_epochs" and by_steps)
            and not (key == "ensemble_bootstrap" and (options.get("ensemble_size") or 1) < 2)
        ]
        rows.append(f"<tr><th>{_e(stage)}</th><td>{' · '.join(shown)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt)


def verdict(evaluation: Evaluation | None, policy: str = "PPO") -> tuple[bool | None, str]:
    """Did the trained policy (PPO, DPO, KTO) beat SFT? By the gold judge when there is one, else the reward model."""
    wins = evaluation.win_rate if evaluation is not None else {}
    judge = "gold" if "gold" in wins else "reward" if "reward" in wins else None
    if evaluation is None or judge is None:
        return None, "No evaluation yet: run `rlhf eval` (or the pipeline's eval stage)."
    w = wins[judge]
    worked = w.ci_low > 0.5
    sft, ppo = (getattr(p, judge) for p in _policies(evaluation))
    text = (
        f"{policy} {'beat' if worked else 'did not clearly beat'} the SFT policy on held-out prompts: "
        f"it wins {w.win_rate:.0%} of paired comparisons by the {judge} judge "
        f"(95% CI {w.ci_low:.0%}–{w.ci_high:.0%}, {int(w.pairs)} pairs). "
        f"Mean {judge} score {sft:.2f} (SFT) → {ppo:.2f} ({policy})."
        f" KL to SFT: {evaluation.kl_ppo_to_sft:.2f} nats per answer."
    )
    return worked, text


def _samples_table(samples: list[dict[str, Any]], limit: int) -> str:
    pairs: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for s in samples:
        pairs.setdefault((s["prompt_index"], s["seed"]), {})[s["policy"]] = s
    rows = []
    for _, pair in sorted(pairs.items())[:limit]:
        if "sft" not in pair or "ppo" not in pair:
            continue
        cells = [f"<td>{_e(_prompt_text(pair['sft']['prompt']))}</td>"]
        for policy in ("sft", "ppo"):
            s = pair[policy]
            score = f"gold {s['gold']:.1f}, " if "gold" in s else ""
            cells.append(f"<td>{_e(s['response'])}<div class='score'>{score}reward {s['reward']:.2f}</div></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table><tr><th>prompt</th><th>SFT policy</th><th>PPO policy</th></tr>" + "".join(rows) + "</table>"


def _metric_rows(evaluation: Evaluation, rouge: dict[str, dict[str, float]] | None) -> str:
    rows = []
    for key, label in (
        ("gold", "gold-judge score"),
        ("reward", "reward-model score"),
        ("length", "length (tokens)"),
        ("eos_rate", "ended with EOS"),
    ):
        if getattr(evaluation.sft, key) is not None:
            cells = []
            for policy in _policies(evaluation):
                value = getattr(policy, key)
                err = getattr(policy, f"{key}_stderr", None)
                cells.append(f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else ""))
            rows.append(f"<tr><td>{label}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    for judge, w in evaluation.win_rate.items():
        rows.append(
            f"<tr><td>PPO win rate ({judge} judge)</td><td colspan=2>{w.win_rate:.1%} "
            f"(95% CI {w.ci_low:.1%}–{w.ci_high:.1%}; {int(w.wins)} wins, {int(w.ties)} ties, "
            f"{int(w.losses)} losses)</td></tr>"
        )
    if any(v is not None for v in evaluation.reward_model_accuracy.values()):
        cells = [evaluation.reward_model_accuracy.get(p) for p in ("sft", "ppo")]
        rows.append(
            "<tr><td>reward model ranks the policy's answers as the gold judge does</td>"
            + "".join(f"<td>{v:.1%}</td>" if v is not None else "<td></td>" for v in cells)
            + "</tr>"
        )
    for policy, scores in (rouge or {}).items():
        rows.append(
            f"<tr><td>ROUGE-L vs reference ({policy.upper()})</td><td colspan=2>{scores['rougeL']:.3f}</td></tr>"
        )
    return "<table><tr><th></th><th>SFT policy</th><th>PPO policy</th></tr>" + "".join(rows) + "</table>"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #1a202c; }
.verdict { padding: 1em 1.2em; border-radius: 8px; font-size: 1.1em; }
.ok { background: #e6ffed; border: 1px solid #2f855a; } .bad { background: #fff5f5; border: 1px solid #c53030; }
.unknown { background: #f7fafc; border: 1px solid #a0aec0; }
.warn { background: #fffaf0; border: 1px solid #c05621; margin-top: 0.8em; } pre { white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.8em 0; width: 100%; } td, th { border: 1px solid #e2e8f0; padding: 6px 8px;
text-align: left; vertical-align: top; } th { background: #f7fafc; } img { max-width: 100%; margin: 0.5em 0; }
.score { color: #718096; font-size: 0.85em; margin-top: 4px; } h2 { margin-top: 1.6em; }
"""


def build_report(run_dir: str | Path, samples_shown: int = 10) -> Path:
    """Write ``report.html`` and its plots for a pipeline run folder; returns the HTML path."""
    run_dir = Path(run_dir)
    plots = run_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    sft_history = _jsonl(run_dir / "sft" / "log_history.jsonl")
    reward_history = _jsonl(stage_folder(run_dir, "reward") / "log_history.jsonl")
    reward = RewardResult.read_if_present(stage_folder(run_dir, "reward"))
    ppo_history = rl_history(run_dir)
    evaluated = EvalResult.read_if_present(run_dir / "eval")
    ppo = PPOResult.read_if_present(stage_folder(run_dir, "ppo"))
    evaluation = evaluated or (ppo.eval if ppo is not None else None)
    samples = _jsonl(run_dir / "eval" / "samples.jsonl") or _jsonl(stage_folder(run_dir, "ppo") / "eval_samples.jsonl")
    annotation = _json(stage_folder(run_dir, "annotate") / "summary.json")
    rounds = read_rounds(run_dir)

    trained = Path(evaluated.ppo_dir) if evaluated is not None else None
    policy = read_stage(trained).stage.upper() if trained is not None and (trained / METRICS_FILE).is_file() else "PPO"
    worked, verdict_text = verdict(evaluation, policy)
    css = {True: "ok", False: "bad", None: "unknown"}[worked]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf report: {_e(run_dir.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>rlhf report: {_e(run_dir.name)}</h1>",
        f"<div class='verdict {css}'>{_e(verdict_text)}</div>",
    ]
    if ppo is not None:
        parts.append(overoptimisation_box(ppo.diagnosis, stage_folder(run_dir, "ppo")))
        parts.append(f"<p>{_e(_method(ppo))}</p>")
        if ppo.judge_is_reward:
            parts.append(f"<div class='verdict bad'>{_e(JUDGE_IS_REWARD)}</div>")
    if evaluation is not None:
        rouge = evaluated.rouge if evaluated is not None else None
        parts += [f"<h2>{_e(policy)} vs SFT on held-out prompts</h2>", _metric_rows(evaluation, rouge)]
        image = plot_comparison(evaluation, plots)
        if image:
            parts.append(_img(plots, image, "SFT vs PPO scores"))
    if rounds:
        parts += [
            f"<h2>Rounds ({len(rounds)})</h2>",
            rounds_table(rounds),
            "<p>Each round after the first samples candidate sets from the current policy, scores them with the "
            "previous round's reward model, and sends the selector's choice to annotators; the reward model is "
            "retrained on every ranking so far and RL continues from the previous policy.</p>",
        ]
        image = plot_rounds(rounds, plots)
        if image:
            parts.append(_img(plots, image, "per-round curves"))
    if ppo_history:
        parts += ["<h2>PPO training</h2>", _img(plots, plot_ppo(ppo_history, plots), "PPO curves")]
        image = plot_diagnostics(ppo_history, plots)
        if image:
            parts += [
                "<h2>RL diagnostics</h2>",
                _img(plots, image, "RL diagnostics"),
                diagnostics_table(ppo_history),
            ]
    if samples:
        parts += [
            f"<h2>Sample answers (first {samples_shown} held-out prompts)</h2>",
            _samples_table(samples, samples_shown),
        ]
    if reward_history:
        held_out = reward.eval if reward is not None else None
        line = f"Held-out pairwise accuracy {held_out.accuracy:.1%} on {held_out.pairs} pairs." if held_out else ""
        parts += [
            "<h2>Reward model</h2>",
            f"<p>{_e(line)}</p>",
            _img(plots, plot_reward(reward_history, plots), "reward model"),
        ]
        calibration = plot_calibration(evaluated.reward_model if evaluated is not None else None, plots)
        if calibration:
            parts.append(_img(plots, calibration, "calibration"))
    if sft_history:
        parts += [
            "<h2>Supervised fine-tuning</h2>",
            _img(plots, plot_sft(sft_history, plots), "SFT loss"),
        ]
    if annotation:
        pairs = _json(stage_folder(run_dir, "preferences") / "done.json").get("rows", {})
        line = (
            f"{annotation.get('answers', 0)} answers on {annotation.get('items', 0)} prompts by "
            f"{len(annotation.get('annotators', []))} {annotation.get('annotator', '')} annotator(s), "
            f"overlap {annotation.get('overlap', 1)}, {annotation.get('noisy_answers', 0)} noisy answers"
        )
        if pairs:
            line += f"; exported {pairs.get('train', 0)} training and {pairs.get('test', 0)} held-out preference pairs"
        parts += ["<h2>Annotation</h2>", f"<p>{_e(line)}.</p>"]
    settings = hyperparameters(run_dir)
    if settings:
        parts += ["<h2>Hyperparameters</h2>", settings]
    parts.append("</body></html>")
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(parts))
    return path


JUDGE_IS_REWARD = (
    "The gold judge was also a training reward (reward_funcs): its scores measure what the policy was "
    "optimised for, not a held-out judgement."
)
ALGORITHMS = {"gae": "PPO (GAE critic)", "grpo": "GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++"}


def _method(ppo: PPOResult) -> str:
    reward = " + ".join(ppo.reward_components) if ppo.reward_components else "reward model"
    return f"Algorithm: {ALGORITHMS.get(ppo.advantage_estimator, ppo.advantage_estimator)}; reward: {reward}."


def _interval(value: float, low: float, high: float, percent: bool = False) -> str:
    form = "{:.1%}" if percent else "{:+.2f}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


def _ppo_folder(run_dir: Path) -> Path:
    """A pipeline folder's ``ppo/`` (its last round's), or a PPO run folder itself."""
    folder = stage_folder(run_dir, "ppo")
    return folder if (folder / METRICS_FILE).is_file() else run_dir


def comparison_table(run_dirs: Sequence[str | Path]) -> str:
    """One row per run (pipeline folders or PPO run folders): algorithm, gold and reward-model gains, KL, speed.

    A pipeline folder's figures come from its eval stage (more seeds), a PPO run's from its own evaluation.
    """
    head = (
        "<tr><th>run</th><th>algorithm</th><th>rounds</th><th>reward</th><th>gold SFT → policy</th>"
        "<th>gold gain [95% CI]</th>"
        "<th>gold win rate [95% CI]</th><th>RM win rate [95% CI]</th><th>KL to SFT</th><th>episodes/s</th></tr>"
    )
    rows = []
    for run_dir in run_dirs:
        ppo = PPOResult.read(_ppo_folder(Path(run_dir)))
        evaluation: Evaluation | None = EvalResult.read_if_present(Path(run_dir) / "eval") or ppo.eval
        cells = [_e(Path(run_dir).name), ALGORITHMS.get(ppo.advantage_estimator, ppo.advantage_estimator)]
        rounds = read_rounds(Path(run_dir))
        cells.append(f"{len(rounds)} ({_e(rounds[-1].selected_by)})" if rounds else "1")
        cells.append(_e(" + ".join(ppo.reward_components) or "model") + (" (judge!)" if ppo.judge_is_reward else ""))
        if evaluation is None:
            cells += ["no evaluation"] + [""] * 4
        else:
            gold, gain = evaluation.sft.gold, evaluation.gain.get("gold")
            cells.append(f"{gold:.2f} → {evaluation.ppo.gold:.2f}" if gold is not None else "")
            cells.append(_interval(gain.mean, gain.ci_low, gain.ci_high) if gain else "")
            for judge in ("gold", "reward"):
                w = evaluation.win_rate.get(judge)
                cells.append(_interval(w.win_rate, w.ci_low, w.ci_high, percent=True) if w else "")
            cells.append(f"{evaluation.kl_ppo_to_sft:.2f}")
        speed = ppo.final.get("throughput/episodes_per_second")
        cells.append(f"{speed:.2f}" if speed is not None else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def build_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write an HTML page comparing several runs (e.g. PPO, GRPO, RLOO and REINFORCE++ on one SFT model)."""
    out = Path(out)
    judged = [d for d in run_dirs if PPOResult.read(_ppo_folder(Path(d))).judge_is_reward]
    note = f"<div class='verdict bad'>{_e(JUDGE_IS_REWARD)} ({_e(', '.join(map(str, judged)))})</div>" if judged else ""
    out.write_text(
        "\n".join(
            [
                "<!doctype html><html><head><meta charset='utf-8'><title>rlhf: methods compared</title>",
                f"<style>{STYLE}</style></head><body><h1>Methods compared on held-out prompts</h1>",
                note,
                comparison_table(run_dirs),
                "<p>Gains and win rates are paired (same prompt and seed) against the SFT policy; "
                "KL in nats per answer; episodes/s over the last 10 iterations.</p></body></html>",
            ]
        )
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="rlhf report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run_dir",
        required=True,
        nargs="+",
        help="pipeline run folder (with sft/, reward/, ppo/, eval/); several (pipeline or PPO run folders): "
        "a page comparing them",
    )
    parser.add_argument("--samples", type=int, default=10, help="sample answers to show")
    parser.add_argument("--out", help="comparison page to write (several runs; default: comparison.html here)")
    args = parser.parse_args(argv)
    if len(args.run_dir) == 1:
        print(build_report(args.run_dir[0], args.samples))
    else:
        print(build_comparison(args.run_dir, args.out or "comparison.html"))
