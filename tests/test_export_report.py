"""Export (adapter, verified merge, model card) and the HTML report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rlhf import merging, models, report, runs
from rlhf.config import ModelArguments, from_options
from rlhf.results import (
    Calibration,
    CalibrationBin,
    Difference,
    Distribution,
    EvalResult,
    Evaluation,
    PairAccuracy,
    PolicyScores,
    PPOResult,
    RewardResult,
    WinRate,
)
from rlhf.stages import export


def test_export_writes_adapter_merged_model_and_card(tiny_sft_run: Path, tmp_path: Path) -> None:
    """The merged export is the model as trained: the 4-bit base + adapter, not full-precision base + adapter."""
    result = export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path)])
    options = runs.read_config(tiny_sft_run)
    assert options["quantization"] == "4bit"  # the tiny recipe is QLoRA
    assert result.merge.merge_base == "dequantized"
    assert result.merge.kl_vs_trained < 1e-4 and result.merge.argmax_agreement == 1.0, result
    assert result.merge.max_logit_diff_vs_base > 1e-2, result  # the adapter was merged

    (model_args,) = from_options([ModelArguments], options)
    tokenizer = models.load_adapter_tokenizer(tmp_path / "adapter")
    trained = PeftModel.from_pretrained(models.load_causal_lm(model_args, tokenizer), str(tmp_path / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[300, 202, 350, 260, 287]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained.eval()(ids).logits, atol=1e-3)
    card = (tmp_path / "README.md").read_text()
    assert "base_model: builtin:tiny" in card and "Recipe (resolved config)" in card and "eval_loss" in card
    assert "dequantized base weights" in card


def test_export_adapter_names_a_base_that_loads_from_any_directory(
    tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path / "export")])
    base = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and (Path(base) / "config.json").is_file(), base
    monkeypatch.chdir(tmp_path)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "export" / "adapter"))


def test_export_into_the_original_weights_reports_what_it_costs(tiny_sft_run: Path, tmp_path: Path) -> None:
    """The opt-out merge is another model for a 4-bit run: the check measures and reports it instead of passing."""
    result = export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path), "--merge_base", "original"])
    assert result.merge.merge_base == "original"
    assert result.merge.kl_vs_trained > 1e-3, result


def test_export_refuses_a_merge_that_did_not_merge(
    tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save_base_unchanged(model_args: ModelArguments, adapter_dir: Path, out: Path, *args: object) -> Path:
        model = AutoModelForCausalLM.from_pretrained(models.resolve_model_path("builtin:tiny"))
        model.save_pretrained(out)
        (out / merging.MERGE_FILE).write_text(json.dumps({"merge_base": "dequantized"}))
        return out

    monkeypatch.setattr(merging, "merge_adapter", save_base_unchanged)
    with pytest.raises(RuntimeError, match="does not reproduce base\\+adapter"):
        export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path)])


def test_push_to_hub_needs_a_token(tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from rlhf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="HF_TOKEN"):
        export.push(tmp_path, "me/model")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_run(root: Path, ci_low: float) -> None:
    _write_jsonl(
        root / "sft" / "log_history.jsonl",
        [{"step": s, "loss": 1 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 0.3}],
    )
    _write_jsonl(
        root / "reward" / "log_history.jsonl",
        [{"step": s, "loss": 0.7 / s, "accuracy": 0.6 + s / 20} for s in range(1, 6)],
    )
    spread = Distribution(mean=0.0, std=1.0, p10=-1.0, p50=0.0, p90=1.0)
    RewardResult(
        output_dir=str(root / "reward"),
        train_loss=0.3,
        train_rows=900,
        global_steps=5,
        world_size=1,
        length_policy={},
        eval=PairAccuracy(accuracy=0.8, pairs=100, mean_gap=1.0, chosen=spread, rejected=spread),
    ).write(root / "reward")
    _write_jsonl(
        root / "ppo" / "metrics.jsonl",
        [
            {"step": s, "objective/score": s, "objective/kl": s / 10, "response/length": 10, "gold/score": s / 5}
            for s in range(1, 6)
        ],
    )
    stats = PolicyScores(
        gold=0.4, gold_stderr=0.05, reward=1.0, reward_stderr=0.1, length=12.0, length_stderr=0.5, eos_rate=1.0
    )
    win = WinRate(win_rate=0.76, ci_low=ci_low, ci_high=0.8, wins=70, ties=40, losses=19, pairs=129)
    (root / "eval").mkdir(parents=True)
    EvalResult(
        output_dir=str(root / "eval"),
        ppo_dir=str(root / "ppo"),
        prompts_dataset="builtin:tiny/prompts",
        sft=stats,
        ppo=replace(stats, gold=1.3),
        kl_ppo_to_sft=1.0,
        prompts=129,
        seeds=[0],
        win_rate={"gold": win, "reward": win},
        reward_model=Calibration(
            accuracy=0.8, mean_gap=1.0, pairs=10, ece=0.1, bins=[CalibrationBin(0.8, 1.0, 10, 0.9, 0.95)]
        ),
    ).write(root / "eval")
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    _write_jsonl(
        root / "eval" / "samples.jsonl",
        [
            {
                "policy": p,
                "prompt_index": 0,
                "seed": 0,
                "prompt": [{"role": "user", "content": "What is 1 plus 1?"}],
                "response": payload if p == "ppo" else "1 plus 1 is 2.",
                "reward": 1.0,
                "gold": 1.0,
            }
            for p in ("sft", "ppo")
        ],
    )


def test_report_shows_the_verdict_plots_and_escaped_samples(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.7)
    page = report.build_report(tmp_path).read_text()
    assert "PPO beat the SFT policy" in page and "76%" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "onerror=alert(2)>" not in page
    for image in ("sft_loss.png", "reward.png", "ppo.png", "comparison.png", "calibration.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000, image
        assert f"report/{image}" in page


def test_report_says_when_ppo_did_not_clearly_win(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.45)
    assert "did not clearly beat" in report.build_report(tmp_path).read_text()


def test_the_verdict_is_the_gold_judges_interval_above_half_else_the_reward_models() -> None:
    """A win only when the lower end of the 95% interval is above 50%, by the gold judge where the task has
    one (whatever the reward model says), by the reward model on a task without one."""
    scores = PolicyScores(reward=0.1, reward_stderr=0.1, length=10.0, length_stderr=1.0, eos_rate=1.0)

    def judged(**wins: tuple[float, float]) -> tuple[bool | None, str]:
        rates = {k: WinRate(0.6, low, high, 60, 0, 40, 100) for k, (low, high) in wins.items()}
        sft, ppo = (replace(scores, gold=g) if "gold" in wins else scores for g in (0.2, 0.5))
        evaluation = Evaluation(sft=sft, ppo=ppo, kl_ppo_to_sft=1.0, prompts=100, seeds=[0], win_rate=rates)
        return report.verdict(evaluation, "DPO")

    worked, text = judged(gold=(0.45, 0.7), reward=(0.9, 0.95))
    assert worked is False and text.startswith("DPO did not clearly beat the SFT policy")
    assert "by the gold judge (95% CI 45%–70%, 100 pairs)" in text and "Mean gold score 0.20 (SFT) → 0.50 (DPO)" in text
    assert judged(gold=(0.51, 0.7), reward=(0.1, 0.2))[0] is True
    assert judged(gold=(0.5, 0.7))[0] is False  # at 50% exactly: not above it
    worked, text = judged(reward=(0.55, 0.7))
    assert worked is True and "DPO beat the SFT policy" in text and "by the reward judge" in text
    assert report.verdict(None) == (None, "No evaluation yet: run `rlhf eval` (or the pipeline's eval stage).")


def test_a_comparison_of_methods_shows_each_runs_gains_and_flags_a_judge_used_as_reward(tmp_path: Path) -> None:
    stats = PolicyScores(
        gold=0.4, gold_stderr=0.05, reward=1.0, reward_stderr=0.1, length=12.0, length_stderr=0.5, eos_rate=1.0
    )
    win = WinRate(win_rate=0.7, ci_low=0.65, ci_high=0.75, wins=70, ties=0, losses=30, pairs=100)
    runs = []
    for name, estimator, components, judged in (
        ("ppo", "gae", ["model"], False),
        ("grpo", "grpo", ["gold_reward"], True),
    ):
        folder = tmp_path / name / "ppo"  # a pipeline folder's PPO stage
        folder.mkdir(parents=True)
        evaluation = Evaluation(
            sft=stats,
            ppo=replace(stats, gold=1.1),
            kl_ppo_to_sft=2.5,
            prompts=100,
            seeds=[0],
            win_rate={"gold": win, "reward": win},
            gain={"gold": Difference(0.7, 0.5, 0.9, 100)},
        )
        PPOResult(
            output_dir=str(folder),
            steps=5,
            advantage_estimator=estimator,
            reward_components=components,
            judge_is_reward=judged,
            final={"throughput/episodes_per_second": 3.0},
            eval=evaluation,
        ).write(folder)
        runs.append(folder.parent)
    page = report.build_comparison(runs, tmp_path / "compare.html").read_text()
    assert "PPO (GAE critic)" in page and "GRPO" in page and "+0.70 [+0.50, +0.90]" in page
    assert "70.0% [65.0%, 75.0%]" in page and "0.40 → 1.10" in page and "3.00" in page
    assert "The gold judge was also a training reward" in page and "gold_reward (judge!)" in page
    assert "The gold judge was also a training reward" in report.build_report(tmp_path / "grpo").read_text()
    assert "The gold judge was also a training reward" not in report.build_report(tmp_path / "ppo").read_text()
