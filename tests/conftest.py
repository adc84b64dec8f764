"""Test setup: offline, quiet, small thread counts; shared tiny-model runs built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
if "PYTEST_XDIST_WORKER" in os.environ:
    # one thread per xdist worker (one worker per core): two torch processes that each spin two
    # threads on two cores slow each other down several times over
    os.environ["OMP_NUM_THREADS"] = "1"

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["feedback_fixtures"]
RECIPES = ROOT / "recipes"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow (end-to-end) tests first: with two xdist workers the long runs start at once and the quick
    tests fill in around them, instead of one long run starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def run_cli(*args: str) -> None:
    """Run an `rlhf` command in this process; raise if it fails."""
    from rlhf.cli import main

    code = main(list(args))
    if code != 0:
        raise AssertionError(f"rlhf {' '.join(args)} exited with {code}")


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A session fixture's folder, built once per test run even with several xdist workers.

    The first worker to need it builds it under a file lock; the others wait for it instead of
    training the same tiny model again (one worker per core, so a second build costs the run its time).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, which every worker's base folder sits in
    out = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (out / ".built").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SFT recipe, shortened: a trained adapter plus its merged model."""
    return _built_once(tmp_path_factory, "sft", _tiny_sft)


def _tiny_sft(out: Path) -> None:
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
    return _built_once(tmp_path_factory, "reward", lambda out: _tiny_reward(out, tiny_sft_run, *overrides))


EXTRA_EOS = "!"  # a frequent token, so that some answers stop at the second EOS id of opinionated_base


@pytest.fixture(scope="session")
def opinionated_base(tiny_sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SFT model, saved with a generation config that sets everything a sampler could inherit.

    Qwen2.5-Instruct-like (repetition penalty, top-k, top-p, a low temperature) and two EOS ids, as
    Llama 3 lists several: none of it may leak into what a rollout engine samples.
    """
    from transformers import GenerationConfig

    from rlhf import models

    folder = tmp_path_factory.mktemp("base") / "merged"
    shutil.copytree(tiny_sft_run / "merged", folder)
    tokenizer = models.load_adapter_tokenizer(folder)
    saved = GenerationConfig(
        do_sample=True,
        temperature=0.3,
        top_k=5,
        top_p=0.6,
        repetition_penalty=1.3,
        no_repeat_ngram_size=3,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EXTRA_EOS)],
        pad_token_id=tokenizer.pad_token_id,
    )
    saved.save_pretrained(folder)
    return folder


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_command(port: int, *args: str) -> list[str]:
    """`rlhf <args>` in two CPU processes (gloo); torchrun starts them, `accelerate launch --cpu` would start one."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return [*launcher, "-m", "rlhf", *args]


def torchrun(port: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run :func:`torchrun_command` to its end."""
    command = torchrun_command(port, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=TORCHRUN_ENV)


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
    from rlhf.arguments import ModelArguments

    return models.load_tokenizer(ModelArguments(model_name_or_path="builtin:tiny"))


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every ``tag`` scalar in the TensorBoard event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {path.parent for path in folder.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
