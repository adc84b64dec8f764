"""The page comparing several runs (e.g. PPO, GRPO, RLOO and REINFORCE++ on one SFT model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhf.report.folders import ppo_folder, read_rounds
from rlhf.report.markup import ALGORITHMS, JUDGE_IS_REWARD, STYLE, esc, interval
from rlhf.results import EvalResult, Evaluation, PPOResult


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
        ppo = PPOResult.read(ppo_folder(Path(run_dir)))
        evaluation: Evaluation | None = EvalResult.read_if_present(Path(run_dir) / "eval") or ppo.eval
        cells = [esc(Path(run_dir).name), ALGORITHMS.get(ppo.advantage_estimator, ppo.advantage_estimator)]
        rounds = read_rounds(Path(run_dir))
        cells.append(f"{len(rounds)} ({esc(rounds[-1].selected_by)})" if rounds else "1")
        cells.append(esc(" + ".join(ppo.reward_components) or "model") + (" (judge!)" if ppo.judge_is_reward else ""))
        if evaluation is None:
            cells += ["no evaluation"] + [""] * 4
        else:
            gold, gain = evaluation.sft.gold, evaluation.gain.get("gold")
            cells.append(f"{gold:.2f} → {evaluation.ppo.gold:.2f}" if gold is not None else "")
            cells.append(interval(gain.mean, gain.ci_low, gain.ci_high) if gain else "")
            for judge in ("gold", "reward"):
                w = evaluation.win_rate.get(judge)
                cells.append(interval(w.win_rate, w.ci_low, w.ci_high, percent=True) if w else "")
            cells.append(f"{evaluation.kl_ppo_to_sft:.2f}")
        speed = ppo.final.get("throughput/episodes_per_second")
        cells.append(f"{speed:.2f}" if speed is not None else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def build_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write an HTML page comparing several runs (e.g. PPO, GRPO, RLOO and REINFORCE++ on one SFT model)."""
    out = Path(out)
    judged = [d for d in run_dirs if PPOResult.read(ppo_folder(Path(d))).judge_is_reward]
    note = (
        f"<div class='verdict bad'>{esc(JUDGE_IS_REWARD)} ({esc(', '.join(map(str, judged)))})</div>" if judged else ""
    )
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
