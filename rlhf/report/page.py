"""The run page: verdict, over-optimisation box, the policy vs SFT, rounds, RL diagnostics, samples, settings."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.report.folders import read_json, read_jsonl, read_rounds, rl_history, stage_folder
from rlhf.report.markup import JUDGE_IS_REWARD, STYLE, esc, method
from rlhf.report.plots import (
    diagnostics,
    plot_calibration,
    plot_comparison,
    plot_diagnostics,
    plot_ppo,
    plot_reward,
    plot_rounds,
    plot_sft,
    policies,
    series,
)
from rlhf.results import (
    METRICS_FILE,
    Diagnosis,
    EvalResult,
    Evaluation,
    PPOResult,
    RewardResult,
    RoundResult,
    read_stage,
)
from rlhf.run_paths import CONFIG_FILE, read_run_config

REPORT_FILE = "report.html"


PLOTS_DIR = "report"


def diagnostics_table(history: Sequence[dict[str, Any]]) -> str:
    """Each diagnostic at the first and last iteration, and its range over the run."""
    rows = []
    for _, keys in diagnostics(history):
        for key, _label in keys:
            _, values = series(history, key)
            if values:
                cells = [esc(key), *(f"{v:.4g}" for v in (values[0], values[-1], min(values), max(values)))]
                rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr><th>metric</th><th>first iteration</th><th>last iteration</th><th>min</th><th>max</th></tr>"
    return "<table>" + head + "".join(rows) + "</table>"


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
            esc(r.selected_by),
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


def _img(plots: Path, name: str | None, alt: str) -> str:
    """A saved plot embedded in the page (base64 PNG), so the page needs no file beside it ("" for no plot)."""
    if name is None:
        return ""
    data = base64.b64encode((plots / name).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{esc(alt)}'>"


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
        + "".join(f"<li>{esc(flag)}</li>" for flag in diagnosis.flags)
        + "</ul>"
    ]
    if diagnosis.peak_step is not None:
        value = f" ({diagnosis.peak_value:.3f}, smoothed)" if diagnosis.peak_value is not None else ""
        parts.append(
            f"<p>The conservative reward ({esc(diagnosis.conservative_metric)}) peaked at iteration "
            f"{diagnosis.peak_step}{esc(value)}.</p>"
        )
    if diagnosis.peak_checkpoint is not None:
        command = (
            f"rlhf export --run_dir {shlex.quote(str(ppo_dir.resolve()))} --checkpoint {diagnosis.peak_checkpoint}"
        )
        parts.append(
            f"<p>The saved checkpoint nearest to that peak is {esc(diagnosis.peak_checkpoint)}; to ship the "
            f"policy from there instead of the final one:</p><pre>{esc(command)}</pre>"
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
            f"<code>{esc(key)}</code>&nbsp;{esc(_option(options[key], run_dir.resolve()))}"
            for key in keys
            if options.get(key) not in (None, [])
            and not (key == "max_steps" and not by_steps)
            and not (key == "num_train_epochs" and by_steps)
            and not (key == "ensemble_bootstrap" and (options.get("ensemble_size") or 1) < 2)
        ]
        rows.append(f"<tr><th>{esc(stage)}</th><td>{' · '.join(shown)}</td></tr>")
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
    sft, ppo = (getattr(p, judge) for p in policies(evaluation))
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
        cells = [f"<td>{esc(_prompt_text(pair['sft']['prompt']))}</td>"]
        for policy in ("sft", "ppo"):
            s = pair[policy]
            score = f"gold {s['gold']:.1f}, " if "gold" in s else ""
            cells.append(f"<td>{esc(s['response'])}<div class='score'>{score}reward {s['reward']:.2f}</div></td>")
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
            for policy in policies(evaluation):
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
        accuracies = [evaluation.reward_model_accuracy.get(p) for p in ("sft", "ppo")]
        rows.append(
            "<tr><td>reward model ranks the policy's answers as the gold judge does</td>"
            + "".join(f"<td>{v:.1%}</td>" if v is not None else "<td></td>" for v in accuracies)
            + "</tr>"
        )
    for name, scores in (rouge or {}).items():
        rows.append(f"<tr><td>ROUGE-L vs reference ({name.upper()})</td><td colspan=2>{scores['rougeL']:.3f}</td></tr>")
    return "<table><tr><th></th><th>SFT policy</th><th>PPO policy</th></tr>" + "".join(rows) + "</table>"


def build_report(run_dir: str | Path, samples_shown: int = 10) -> Path:
    """Write ``report.html`` and its plots for a pipeline run folder; returns the HTML path."""
    run_dir = Path(run_dir)
    plots = run_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    sft_history = read_jsonl(run_dir / "sft" / "log_history.jsonl")
    reward_history = read_jsonl(stage_folder(run_dir, "reward") / "log_history.jsonl")
    reward = RewardResult.read_if_present(stage_folder(run_dir, "reward"))
    ppo_history = rl_history(run_dir)
    evaluated = EvalResult.read_if_present(run_dir / "eval")
    ppo = PPOResult.read_if_present(stage_folder(run_dir, "ppo"))
    evaluation = evaluated or (ppo.eval if ppo is not None else None)
    samples = read_jsonl(run_dir / "eval" / "samples.jsonl") or read_jsonl(
        stage_folder(run_dir, "ppo") / "eval_samples.jsonl"
    )
    annotation = read_json(stage_folder(run_dir, "annotate") / "summary.json")
    rounds = read_rounds(run_dir)

    trained = Path(evaluated.ppo_dir) if evaluated is not None else None
    policy = read_stage(trained).stage.upper() if trained is not None and (trained / METRICS_FILE).is_file() else "PPO"
    worked, verdict_text = verdict(evaluation, policy)
    css = {True: "ok", False: "bad", None: "unknown"}[worked]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf report: {esc(run_dir.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>rlhf report: {esc(run_dir.name)}</h1>",
        f"<div class='verdict {css}'>{esc(verdict_text)}</div>",
    ]
    if ppo is not None:
        parts.append(overoptimisation_box(ppo.diagnosis, stage_folder(run_dir, "ppo")))
        parts.append(f"<p>{esc(method(ppo))}</p>")
        if ppo.judge_is_reward:
            parts.append(f"<div class='verdict bad'>{esc(JUDGE_IS_REWARD)}</div>")
    if evaluation is not None:
        rouge = evaluated.rouge if evaluated is not None else None
        parts += [f"<h2>{esc(policy)} vs SFT on held-out prompts</h2>", _metric_rows(evaluation, rouge)]
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
            f"<p>{esc(line)}</p>",
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
        pairs = read_json(stage_folder(run_dir, "preferences") / "done.json").get("rows", {})
        line = (
            f"{annotation.get('answers', 0)} answers on {annotation.get('items', 0)} prompts by "
            f"{len(annotation.get('annotators', []))} {annotation.get('annotator', '')} annotator(s), "
            f"overlap {annotation.get('overlap', 1)}, {annotation.get('noisy_answers', 0)} noisy answers"
        )
        if pairs:
            line += f"; exported {pairs.get('train', 0)} training and {pairs.get('test', 0)} held-out preference pairs"
        parts += ["<h2>Annotation</h2>", f"<p>{esc(line)}.</p>"]
    settings = hyperparameters(run_dir)
    if settings:
        parts += ["<h2>Hyperparameters</h2>", settings]
    parts.append("</body></html>")
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(parts))
    return path
