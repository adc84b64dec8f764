"""Test setup: offline, quiet, small thread counts; shared tiny-model runs built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["feedback_fixtures"]
RECIPES = ROOT / "recipes"


def run_cli(*args: str) -> None:
    """Run an `rlhf` command in this process; raise if it fails."""
    from rlhf.cli import main

    code = main(list(args))
    if code != 0:
        raise AssertionError(f"rlhf {' '.join(args)} exited with {code}")


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SFT recipe, shortened: a trained adapter plus its merged model."""
    out = tmp_path_factory.mktemp("sft")
    run_cli(
        "sft",
        "--config",
        str(RECIPES / "tiny" / "sft.yaml"),
        "--output_dir",
        str(out),
        "--max_steps",
        "40",
        "--eval_steps",
        "20",
        "--save_steps",
        "20",
        "--logging_steps",
        "5",
        "--disable_tqdm",
        "true",
    )
    return out


def _tiny_reward(out: Path, sft_run: Path, *overrides: str) -> Path:
    """The tiny reward recipe on an SFT run's merged model, with `overrides` (shortened runs)."""
    run_cli(
        "reward",
        "--config",
        str(RECIPES / "tiny" / "reward.yaml"),
        "--model_name_or_path",
        str(sft_run / "merged"),
        "--output_dir",
        str(out),
        "--eval_strategy",
        "no",
        "--disable_tqdm",
        "true",
        *overrides,
    )
    return out


@pytest.fixture(scope="session")
def tiny_reward_run(tiny_sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reward recipe on the session's SFT model, shortened."""
    overrides = ("--max_steps", "120", "--save_steps", "60", "--logging_steps", "10")
    return _tiny_reward(tmp_path_factory.mktemp("reward"), tiny_sft_run, *overrides)


def torchrun(port: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`rlhf <args>` in two CPU processes (gloo); torchrun starts them, `accelerate launch --cpu` would start one."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "rlhf",
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def ppo_args(out: Path, sft_run: Path, reward_run: Path, *overrides: str) -> list[str]:
    """The tiny PPO recipe, made small (3 iterations of 16 episodes), on the session's SFT and reward runs."""
    return [
        "--config",
        str(RECIPES / "tiny" / "ppo.yaml"),
        "--model_name_or_path",
        str(sft_run / "merged"),
        "--reward_model_path",
        str(reward_run),
        "--output_dir",
        str(out),
        "--steps",
        "3",
        "--rollout_batch_size",
        "16",
        "--mini_batch_size",
        "8",
        "--max_new_tokens",
        "24",
        "--eval_max_prompts",
        "16",
        "--eval_seeds",
        "0",
        "--disable_tqdm",
        "true",
        "--save_steps",
        "100",
        *overrides,
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf import models
    from rlhf.config import ModelArguments

    return models.load_tokenizer(ModelArguments(model_name_or_path="builtin:tiny"))
