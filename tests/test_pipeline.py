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
from rlhf.core.errors import ConfigError
from rlhf.results import EvalResult
from rlhf.stages import pipeline

# The tiny recipe with fewer steps, prompts and seeds: the same code paths in a minute instead of several.
QUICK = [
    *("--sft.max_steps", "20", "--sft.eval_steps", "10", "--sft.save_steps", "10"),
    *("--reward.max_steps", "20", "--reward.eval_steps", "10", "--reward.save_steps", "10"),
    *("--ppo.steps", "6", "--ppo.save_steps", "2"),
    *("--annotation_prompts", "60", "--eval_seeds", "0"),
]
TINY = str(RECIPES / "tiny")


def test_stage_options_are_split_from_the_pipelines_and_checked_before_anything_runs(tmp_path: Path) -> None:
    own, stages = pipeline.split_stage_options(["--ppo.steps", "6", "--sft.max_steps=20", "--seed", "1"])
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
    return {
        stage: (out / stage / pipeline.DONE).stat().st_mtime
        for stage in pipeline.STAGES
        if (out / stage / pipeline.DONE).exists()
    }


@pytest.mark.slow
def test_pipeline_killed_mid_ppo_resumes_then_skips_finished_stages_and_redoes_from_one(tmp_path: Path) -> None:
    """One quick pipeline, SIGKILLed mid-PPO: the rerun resumes PPO and redoes nothing finished; a third run
    has nothing to do; ``--from_stage eval`` redoes eval and what follows it, and only that."""
    out = tmp_path / "run"
    args = ["--recipe", TINY, "--output_dir", str(out), "--disable_tqdm", "true", *QUICK]
    command = [sys.executable, "-m", "rlhf", "pipeline", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not (out / "ppo" / "checkpoint-2").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "ppo" / "checkpoint-2").is_dir() and not (out / "ppo" / pipeline.DONE).exists()
    before = _done(out)
    assert set(before) == set(pipeline.STAGES[: pipeline.STAGES.index("ppo")])
    ppo_route = pipeline.stages_for("ppo")

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and "checkpoint-" in result.stderr
    first = _done(out)
    assert set(first) == set(ppo_route)
    assert all(first[s] == before[s] for s in before)  # finished stages were not redone
    steps = [json.loads(line)["step"] for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert (out / "report.html").is_file() and (out / "export" / "merged" / "model.safetensors").is_file()

    summary = pipeline.main(args)  # nothing to do: every stage is finished
    assert list(summary) == list(ppo_route) and _done(out) == first
    assert summary["annotate"]["answers"] == summary["annotate"]["items"] > 50
    assert summary["preferences"]["rows"]["train"] > 100

    pipeline.main([*args, "--from_stage", "eval"])
    again = _done(out)
    assert all(again[s] == first[s] for s in ppo_route[: ppo_route.index("eval")])
    assert all(again[s] > first[s] for s in ("eval", "export", "report"))


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
    summary = json.loads((out / "annotate" / pipeline.DONE).read_text())
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
