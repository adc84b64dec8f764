"""`scripts/gpu_check.py` runs its whole flow (build, data, sft, reward, ppo with the real recipes) on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_smoke_run_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny"]
    command += ["--skip-7b", "--steps", "2", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PPO / SFT peak" in done.stdout

    model = json.loads(out.read_text())["models"]["tiny"]
    assert set(model["stages"]) == {"sft", "reward", "ppo", "grpo"}
    for name, stage in model["stages"].items():
        assert stage["wall_seconds"] > 0 and stage["tokens_per_second"] > 0 and stage["peak_rss_mib"] > 0
        config = (tmp_path / "work" / "tiny" / name / "rlhf_config.yaml").read_text()
        assert "quantization: 4bit" in config and "optim: paged_adamw_8bit" in config  # the recipe's QLoRA path
    assert model["peak_basis"] == "peak_rss_mib" and model["ppo_over_sft_peak"] > 0 and model["grpo_over_sft_peak"] > 0
    assert "advantage_estimator: grpo" in (tmp_path / "work" / "tiny" / "grpo" / "rlhf_config.yaml").read_text()
