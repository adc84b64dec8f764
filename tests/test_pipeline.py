"""The one-command pipeline: every stage, skipping finished ones, redoing from a stage, resuming a kill."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import RECIPES

from feedback.store import Store
from rlhf import runs
from rlhf.results import EvalResult, RoundResult
from rlhf.stages import pipeline, pipeline_options, steps
from rlhf.stages.rounds import SELECTION_FILE
from rlhf_core.errors import ConfigError

# The tiny recipe with fewer steps, prompts and seeds: the same code paths in a minute instead of several.
QUICK = [
    *("--sft.max_steps", "20", "--sft.eval_steps", "10", "--sft.save_steps", "10"),
    *("--reward.max_steps", "20", "--reward.eval_steps", "10", "--reward.save_steps", "10"),
    *("--ppo.steps", "6", "--ppo.save_steps", "2"),
    *("--annotation_prompts", "60", "--eval_seeds", "0"),
]
TINY = str(RECIPES / "tiny")


def test_stage_options_are_split_from_the_pipelines_and_checked_before_anything_runs(tmp_path: Path) -> None:
    own, stages = pipeline_options.split_stage_options(["--ppo.steps", "6", "--sft.max_steps=20", "--seed", "1"])
    assert own == ["--seed", "1"] and stages["sft"] == ["--max_steps", "20"] and stages["ppo"] == ["--steps", "6"]
    assert set(stages) == {"sft", "reward", "ppo", "dpo", "kto"} and stages["reward"] == stages["dpo"] == []
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"unknown option '--max_stepz' \(did you mean 'max_steps'\?\)"):
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), "--sft.max_stepz", "5"])
    with pytest.raises(ConfigError, match="no stage 'rewrad'"):
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), "--rewrad.max_steps", "5"])
    with pytest.raises(ConfigError, match=r"--dpo\.\* options given, but the algorithm is 'ppo'"):
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), "--dpo.beta", "0.1"])
    assert not out.exists()  # refused before any stage ran


def _done(out: Path) -> dict[str, float]:
    """Every finished stage's (and round's) ``done.json``, by folder, with its modification time."""
    return {str(p.parent.relative_to(out)): p.stat().st_mtime for p in out.rglob(steps.DONE)}


@pytest.mark.slow
def test_two_rounds_killed_mid_ppo_resume_skip_finished_stages_redo_from_one_and_record_the_selection(
    tmp_path: Path,
) -> None:
    """One quick two-round pipeline (the second round annotates what the reward model is least sure of),
    SIGKILLed in round 2's RL: the rerun resumes that RL from its checkpoint and redoes nothing finished;
    a third run has nothing to do; ``--from_stage eval`` redoes eval and what follows it, and only that.
    Round 2 samples the round-1 policy, retrains the reward model on both rounds' rankings and continues
    RL from round 1's policy; the store, the export and the report show which selector chose what."""
    out = tmp_path / "run"
    rounds = ["--rounds", "2", "--annotation_budget", "40", "--select", "uncertainty"]
    args = ["--recipe", TINY, "--output_dir", str(out), "--disable_tqdm", "true", *QUICK, *rounds]
    command = [sys.executable, "-m", "rlhf", "pipeline", *args]
    env = dict(os.environ)  # one thread (conftest): two threads per process oversubscribe the xdist workers
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "round-2"
    deadline = time.time() + 900
    while not (second / "ppo" / "checkpoint-2").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (second / "ppo" / "checkpoint-2").is_dir() and not (second / "ppo" / steps.DONE).exists()
    before = _done(out)
    planned = pipeline.Pipeline(pipeline.PipelineConfig(recipe=TINY, output_dir=str(out), rounds=2))
    keys = [str(planned.folder(s, r).relative_to(out)) for s, r in planned.plan()]
    assert set(before) == {*keys[: keys.index("round-2/ppo")], "round-1"}

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and "checkpoint-" in result.stderr
    first = _done(out)
    assert set(first) == {*keys, "round-1", "round-2"}
    assert all(first[s] == before[s] for s in before)  # finished stages were not redone
    history = [json.loads(line) for line in (second / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]  # the recipe's 6 iterations, split over 2 rounds
    assert (out / "report.html").is_file() and (out / "export" / "merged" / "model.safetensors").is_file()

    summary = pipeline.main(args)  # nothing to do: every stage is finished
    assert [k for k in summary if k not in ("round-1", "round-2")] == keys and _done(out) == first
    assert summary["round-1/annotate"]["answers"] == summary["round-1/annotate"]["items"] == 20
    assert summary["round-2/preferences"]["rows"]["train"] > summary["round-1/preferences"]["rows"]["train"] > 30

    rounds_done = [RoundResult.read(out / f"round-{n}") for n in (1, 2)]
    assert [r.selected_by for r in rounds_done] == ["sequential", "uncertainty"]
    assert [r.items for r in rounds_done] == [20, 20] and [r.answers for r in rounds_done] == [20, 20]
    assert [r.policy_steps for r in rounds_done] == [3, 3]
    second_round = rounds_done[1]
    assert second_round.pool > second_round.items and second_round.reward_accuracy_on_policy is not None
    assert second_round.mean_uncertainty_selected is not None and second_round.mean_uncertainty_pool is not None
    assert second_round.mean_uncertainty_selected >= second_round.mean_uncertainty_pool  # the least certain
    # round 2 continues round 1's policy (its first iteration is already away from SFT); the leash is to SFT
    config = runs.read_config(second / "ppo")
    assert config["policy_init"] == str(out / "round-1" / "ppo")
    assert config["reward_model_path"] == str(second / "reward")
    assert history[0]["objective/kl"] > 0.01
    store = Store.create(f"sqlite:///{out / 'feedback.db'}")
    batches = {b.batch: b for b in store.progress().batches}
    assert set(batches) == {1, 2} and batches[2].selected_by == "uncertainty" and batches[2].complete == 20
    pool = [json.loads(line) for line in (second / "generate" / SELECTION_FILE).read_text().splitlines()]
    chosen = {json.dumps(r["prompt"], sort_keys=True): r["uncertainty"] for r in pool if r["chosen"]}
    stored = {json.dumps(i.messages, sort_keys=True): i for i in store.records() if i.batch == 2}
    assert set(stored) == set(chosen) and all(i.selection_score == chosen[k] for k, i in stored.items())
    assert all(i.selected_by == "uncertainty" for i in stored.values())
    pairs = [json.loads(line) for line in (second / "preferences" / "train.jsonl").read_text().splitlines()]
    assert {p["batch"] for p in pairs} == {1, 2}
    assert EvalResult.read(out / "eval").ppo_dir == str(second / "ppo")  # the last round's policy is judged
    assert "Rounds (2)" in (out / "report.html").read_text()

    pipeline.main([*args, "--from_stage", "eval"])
    again = _done(out)
    redone = {"eval", "export", "report"}
    assert all(again[s] == first[s] for s in first if s not in redone)
    assert all(again[s] > first[s] for s in redone)


def test_a_run_with_people_but_no_accounts_stops_before_it_trains_saying_how_to_add_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    db = f"sqlite:///{(out / 'feedback.db').resolve()}"
    with pytest.raises(ConfigError) as error:
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), "--annotator", "human"])
    assert str(error.value) == (
        f"annotator: human, but the feedback store {db} has no active accounts; create them first "
        f"(`rlhf feedback annotators add NAME --db {db}`) or use --annotator simulated"
    )
    assert not (out / "sft").exists()


def test_the_pipeline_ends_by_printing_where_its_report_is(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"

    def finished(self: pipeline.Pipeline) -> dict[str, object]:  # every stage done; the report stage wrote its page
        out.mkdir()
        (out / "report.html").write_text("<html></html>")
        return {"report": {}}

    monkeypatch.setattr(pipeline.Pipeline, "run", finished)
    assert pipeline.main(["--recipe", TINY, "--output_dir", str(out)]) == {"report": {}}
    assert capsys.readouterr().out.splitlines()[-1] == f"Report: {(out / 'report.html').resolve()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pipeline_waits_for_people_in_the_feedback_app(tmp_path: Path) -> None:
    """--annotator human: the pipeline serves the app, a person ranks through its REST API, it goes on."""
    out, port = tmp_path / "run", _free_port()
    command = [sys.executable, "-m", "rlhf", "pipeline", "--recipe", TINY, "--output_dir", str(out), *QUICK]
    command += ["--annotator", "human", "--annotation_prompts", "3", "--port", str(port), "--stop_after", "annotate"]
    command += ["--wait_timeout", "600", "--disable_tqdm", "true"]
    out.mkdir()  # accounts first: a human run without any is refused before it trains
    token = Store.create(f"sqlite:///{out / 'feedback.db'}").add_annotator("alice")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else ""
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        ranked = 0
        while (item := client.get("/api/items/next").json()["item"]) is not None:
            ranking = [{"candidate_id": c["id"], "rank": i + 1} for i, c in enumerate(item["candidates"])]
            body = {"client_id": f"test-{item['prompt_id']:08d}", "prompt_id": item["prompt_id"], "ranking": ranking}
            assert client.post("/api/answers", json=body).status_code == 201
            ranked += 1
        assert ranked == 3
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    summary = json.loads((out / "annotate" / steps.DONE).read_text())
    assert summary["annotator"] == "human" and summary["answers"] == summary["complete"] == 3
    assert not (out / "preferences").exists()  # --stop_after annotate


@pytest.mark.slow
def test_the_offline_route_trains_dpo_then_kto_on_the_same_annotations_and_evaluates_them_as_ppo(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = ["--recipe", TINY, "--output_dir", str(out), "--disable_tqdm", "true", *QUICK]
    summary = pipeline.main([*args, "--algorithm", "dpo", "--dpo.max_steps", "4", "--dpo.eval_strategy", "no"])
    assert list(summary) == list(pipeline.stages_for("dpo")) and not (out / "ppo").exists()
    assert summary["preferences"]["kto_rows"]["train"] > 0  # the rankings as thumbs, ready for kto
    evaluated = EvalResult.read(out / "eval")
    assert evaluated.ppo_dir == str(out / "dpo") and {"gold", "reward"} <= set(evaluated.win_rate)
    assert evaluated.reward_model is not None and (out / "export" / "merged" / "model.safetensors").is_file()
    assert "DPO" in (out / "report.html").read_text()

    kto_args = [*args, "--algorithm", "kto", "--from_stage", "dpo", "--kto.max_steps", "4", "--kto.eval_strategy", "no"]
    summary = pipeline.main(kto_args)
    assert summary["kto"]["train_rows"] == summary["preferences"]["kto_rows"]["train"]
    assert EvalResult.read(out / "eval").ppo_dir == str(out / "kto") and not (out / "dpo").exists()
