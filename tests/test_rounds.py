"""``rlhf pipeline --rounds``: iterated annotation of the current policy, with a budget and a selector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import QUICK, TINY

from feedback.store import Store
from rlhf import runs
from rlhf.core.errors import ConfigError
from rlhf.results import EvalResult, RoundResult
from rlhf.stages import pipeline


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rounds", "0"], "rounds: 0; the pipeline runs at least one round"),
        (["--rounds", "3", "--annotation_budget", "2"], r"annotation_budget: 2 rankings is smaller than one batch"),
        (["--rounds", "2", "--overlap", "2", "--annotation_budget", "9"], "not a multiple of overlap 2"),
        (["--rounds", "2", "--algorithm", "dpo"], "rounds: 2 with --algorithm dpo"),
        (["--rounds", "4", "--ppo.steps", "3"], r"--ppo.steps: 3 RL iterations cannot be split over 4 rounds"),
        (["--rounds", "2", "--selection_pool", "0.5"], "selection_pool: 0.5"),
        (["--rounds", "2", "--select", "margin"], "invalid choice: 'margin'"),
    ],
)
def test_a_round_plan_that_cannot_work_is_refused_naming_the_option_before_anything_runs(
    tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises((ConfigError, SystemExit)) as error:
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), *options])
    assert error.type is SystemExit or error.match(message)
    assert not out.exists()


def test_human_rounds_without_accounts_stop_before_training_and_the_budget_splits_evenly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = pipeline.PipelineConfig(recipe=TINY, output_dir=str(out), annotator="human", rounds=2)
    with pytest.raises(ConfigError, match=r"annotator: human, but the feedback store .* has no active accounts"):
        pipeline.Pipeline(config).run()
    assert not (out / "sft").exists()
    # unset budget: the one-round pipeline's (one ranking per distinct prompt among the first 1000), split in 3
    config = pipeline.PipelineConfig(recipe=TINY, output_dir=str(out), rounds=3, annotation_prompts=1000)
    planned = pipeline.Pipeline(config)
    assert planned.round_items == [184, 184, 184] and planned.round_steps == [17, 17, 16]
    assert pipeline.split_evenly(10, 3) == [4, 3, 3]
    assert [f"{s}@{r}" for s, r in planned.plan()][:7] == [
        "sft@0", "generate@1", "annotate@1", "preferences@1", "reward@1", "ppo@1", "generate@2",
    ]  # fmt: skip
    assert planned.folder("ppo", 2) == out / "round-2" / "ppo" and planned.folder("eval") == out / "eval"
    one = pipeline.Pipeline(pipeline.PipelineConfig(recipe=TINY, output_dir=str(out)))
    assert one.round_items is None and one.folder("ppo", 1) == out / "ppo"  # one round: today's layout
    with pytest.raises(ConfigError, match="from_stage: reward of round 1 would leave later rounds' items"):
        planned.clear_from("reward")


@pytest.mark.slow
def test_two_rounds_killed_in_the_second_resume_there_and_record_what_the_selector_chose(tmp_path: Path) -> None:
    """Round 2 samples the round-1 policy, annotates what the reward model is least sure of, retrains the
    reward model on both rounds' rankings and continues RL from round 1's policy; a SIGKILL in round 2's RL
    resumes there without redoing round 1."""
    out = tmp_path / "run"
    quick = [*QUICK, "--rounds", "2", "--annotation_budget", "40", "--select", "uncertainty"]
    args = ["--recipe", TINY, "--output_dir", str(out), "--disable_tqdm", "true", *quick]
    command = [sys.executable, "-m", "rlhf", "pipeline", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = out / "round-2"
    deadline = time.time() + 900
    while not (second / "ppo" / "checkpoint-2").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (second / "ppo" / "checkpoint-2").is_dir(), process.stderr.read()[-3000:] if process.stderr else ""
    assert (out / "round-1" / pipeline.DONE).is_file() and not (second / pipeline.DONE).exists()
    first_round = {p: p.stat().st_mtime for p in (out / "round-1").rglob(pipeline.DONE)}

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    assert {p: p.stat().st_mtime for p in (out / "round-1").rglob(pipeline.DONE)} == first_round  # not redone

    rounds = [RoundResult.read(out / f"round-{n}") for n in (1, 2)]
    assert [r.selected_by for r in rounds] == ["sequential", "uncertainty"]
    assert [r.items for r in rounds] == [20, 20] and [r.answers for r in rounds] == [20, 20]
    assert [r.policy_steps for r in rounds] == [3, 3]
    assert rounds[1].pool > rounds[1].items and rounds[1].reward_accuracy_on_policy is not None
    assert rounds[1].mean_uncertainty_selected is not None and rounds[1].mean_uncertainty_pool is not None
    assert rounds[1].mean_uncertainty_selected >= rounds[1].mean_uncertainty_pool  # the least certain were chosen
    assert rounds[1].preference_pairs > rounds[0].preference_pairs  # the reward model learns from both rounds
    # round 2 continues round 1's policy (its first iteration is already away from SFT); the leash is to SFT
    config = runs.read_config(second / "ppo")
    assert config["policy_init"] == str(out / "round-1" / "ppo")
    assert config["reward_model_path"] == str(second / "reward")
    history = [json.loads(line) for line in (second / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3] and history[0]["objective/kl"] > 0.01

    store = Store.create(f"sqlite:///{out / 'feedback.db'}")
    batches = {b.batch: b for b in store.progress().batches}
    assert set(batches) == {1, 2} and batches[2].selected_by == "uncertainty" and batches[2].complete == 20
    pool = [json.loads(line) for line in (second / "generate" / pipeline.SELECTION_FILE).read_text().splitlines()]
    chosen = {json.dumps(r["prompt"], sort_keys=True): r["uncertainty"] for r in pool if r["chosen"]}
    stored = {json.dumps(i.messages, sort_keys=True): i for i in store.records() if i.batch == 2}
    assert set(stored) == set(chosen) and all(i.selection_score == chosen[k] for k, i in stored.items())
    assert all(i.selected_by == "uncertainty" for i in stored.values())
    pairs = [json.loads(line) for line in (second / "preferences" / "train.jsonl").read_text().splitlines()]
    assert {p["batch"] for p in pairs} == {1, 2}

    assert EvalResult.read(out / "eval").ppo_dir == str(second / "ppo")  # the last round's policy is judged
    report = (out / "report.html").read_text()
    assert "Rounds (2)" in report and "uncertainty" in report
    assert yaml.safe_load((out / "pipeline_config.yaml").read_text())["rounds"] == 2
