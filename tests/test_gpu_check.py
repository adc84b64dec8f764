"""`benchmarks/gpu_check.py` and the device procedure (docs/gpu-check.md), rehearsed on CPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _script(folder: Path, name: str) -> ModuleType:
    sys.path.insert(0, str(folder))  # gpu_check imports bench_ppo as its own directory's module
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


gpu_check = _script(BENCHMARKS, "gpu_check")
wheels = _script(ROOT / "scripts", "prepare_device_wheels")


def test_default_run_fits_eight_minutes_on_one_h100_by_its_estimate(tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    assert args.shapes == ["qwen2.5-7b", "qwen2.5-0.5b"]  # memory, the 7B question, first
    estimates = gpu_check.estimates_for(args)
    assert set(estimates["qwen2.5-7b"]) == {"build", "sft", "reward", "ppo"}
    assert sum(sum(steps.values()) for steps in estimates.values()) <= 8 * 60
    assert gpu_check.parse_args(["--out", ".", "--shape", "qwen2.5-0.5b", "--shape", "qwen2.5-7b"]).shapes[0] == (
        "qwen2.5-7b"
    )


def test_set_reaches_every_stage_or_one(capsys: pytest.CaptureFixture[str]) -> None:
    args = gpu_check.parse_args(["--out", ".", "--set", "optim=adamw_torch", "--set", "ppo.max_new_tokens=64"])
    assert args.overrides("sft") == {"optim": "adamw_torch"}
    assert args.overrides("ppo") == {"optim": "adamw_torch", "max_new_tokens": "64"}
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", ".", "--set", "rl.steps=3"])
    assert "--set rl.steps=3: expected KEY=VALUE or STAGE.KEY=VALUE" in capsys.readouterr().err


def test_grown_vocabulary_decodes_every_sampled_id_to_as_many_tokens(tmp_path: Path) -> None:
    """At Qwen2.5's 151,936 ids, through the tokenizer class the stages load (Qwen2's, picked from the config)."""
    from transformers import AutoConfig, AutoTokenizer

    shape = gpu_check.PLANS["qwen2.5-0.5b"].architecture
    AutoConfig.for_model("qwen2", **{k: v for k, v in shape.items() if k != "model_type"}).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(ROOT / "rlhf" / "tiny" / "model").save_pretrained(tmp_path)
    tiny = AutoTokenizer.from_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps(gpu_check.grow_vocabulary(spec, shape["vocab_size"])))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tiny) == 606 and len(tokenizer) == shape["vocab_size"]

    rng = random.Random(0)
    new = [rng.randrange(606, shape["vocab_size"]) for _ in range(300)]
    assert tokenizer(tokenizer.decode(new), add_special_tokens=False)["input_ids"] == new
    sampled = [rng.randrange(4, shape["vocab_size"]) for _ in range(300)]  # as a random policy samples
    assert len(tokenizer(tokenizer.decode(sampled), add_special_tokens=False)["input_ids"]) == len(sampled)
    assert len(tiny(tiny.decode(sampled), add_special_tokens=False)["input_ids"]) < 10  # the bug it fixes
    chat = [{"role": "user", "content": "What is 12 plus 30?"}, {"role": "assistant", "content": "12 plus 30 is 42."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == tiny.apply_chat_template(chat, tokenize=False)
    assert (
        tokenizer(tiny.apply_chat_template(chat, tokenize=False))["input_ids"]
        == (tiny(tiny.apply_chat_template(chat, tokenize=False))["input_ids"])
    )


def test_a_step_past_its_timeout_is_killed_and_keeps_what_it_measured(tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--out", str(tmp_path / "out"), "--device", "cpu", "--workdir", str(tmp_path)])
    check = gpu_check.Check(args, {})
    started = time.perf_counter()
    # the 494M shape: importing torch and initialising 2 GB of weights take longer than 4 s on any machine
    # (the tiny shape's whole build took 5 s on an idle one), and the worker's monitor writes every 2 s
    result = check.process("build", "_build", ["qwen2.5-0.5b", str(tmp_path / "model")], timeout=4)
    assert result["timed_out"] and time.perf_counter() - started < 20
    assert result["peak_rss_mib"] > 0  # written by the worker's monitor before it was killed
    assert "parameters" not in result  # the build's own result never came: it was stopped, not finished
    # (its files may be half written: a build killed while saving leaves config.json without weights)


def test_training_stages_import_only_the_image_and_the_carried_wheels() -> None:
    """What the device has: its image's packages and the wheels the script carries; anything else is absent."""
    from packaging.requirements import Requirement

    installed = {wheels.normalize(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    carried = wheels.needed(lambda name: importlib.metadata.requires(name) or [])
    assert {"trl", "bitsandbytes", "datasets"} <= set(carried) and not set(carried) & wheels.IMAGE
    # what the image's packages and the carried ones need, as installed here (this environment's versions of the
    # image's packages may need others than the image's: huggingface_hub 2 needs httpx2, 1.33 does not)
    allowed, queue = {"rlhf"}, [*wheels.IMAGE, *carried]  # rlhf: this checkout, on PYTHONPATH
    while queue:
        name = queue.pop()
        if name in allowed or name not in installed:
            continue
        allowed.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(wheels.normalize(requirement.name))
    # the stages' modules, and bitsandbytes, which rlhf/models.py imports when it loads a 4-bit model
    modules = ["rlhf.cli", "rlhf.stages.sft", "rlhf.stages.reward", "rlhf.stages.ppo", "bitsandbytes"]
    code = f"""
import importlib, importlib.machinery, importlib.metadata, re, sys
allowed = set({sorted(allowed)!r})
owners = importlib.metadata.packages_distributions()
absent = set()

class Device(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = {{re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(top, [])}}
        if dists and not dists & allowed:
            absent.add(top)
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [Device if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
for module in {modules!r}:
    importlib.import_module(module)
print("absent, as on the device:", sorted(absent))
print("rlhf from", importlib.import_module("rlhf").__file__)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"rlhf from {ROOT / 'rlhf' / '__init__.py'}" in done.stdout


def test_sharded_recipes_run_where_there_are_two_processes_and_say_why_not_elsewhere() -> None:
    assert gpu_check.sharded_plan("cuda", 2) == (gpu_check.SHARDED_STAGES, None)
    assert set(gpu_check.SHARDED_STAGES) == {"sft", "reward", "dpo", "kto", "ppo"}
    for device, processes in (("cuda", 1), ("cpu", 0)):
        stages, note = gpu_check.sharded_plan(device, processes)
        assert stages == () and note is not None and "sharding needs 2 or more processes" in note
    assert gpu_check.sharded_plan("cpu", 2)[0] == ("ppo",)  # the stage that shards on CPU processes


@pytest.mark.slow
def test_gpu_check_cpu_run_reports_every_stage(tmp_path: Path) -> None:
    """The whole flow on the tiny shape with the real recipes, ``--set`` options, results under ``--out``.

    In fp32: bf16 on CPU is several times slower; test_bf16.py and the rehearsal (docs/gpu-check.md) run it.
    """
    out, work = tmp_path / "out", tmp_path / "work"
    command = [
        sys.executable,
        str(BENCHMARKS / "gpu_check.py"),
        "--device",
        "cpu",
        "--shape",
        "tiny",
        "--out",
        str(out),
    ]
    command += ["--workdir", str(work), "--cache", str(tmp_path / "cache"), "--set", "seed=7"]
    command += ["--set", "grpo.max_new_tokens=6", "--sharded-processes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PPO / SFT peak RSS" in done.stdout

    results = json.loads((out / "gpu_check.json").read_text())
    assert "failed" not in results["preflight"] and len(results["preflight"]["checks"]) == 3
    model = results["models"]["tiny"]
    assert set(model["stages"]) == {"sft", "reward", "ppo", "grpo"}
    for name, stage in model["stages"].items():
        assert not stage.get("timed_out") and stage["measured_steps"] == 2, name
        assert stage["tokens_per_second"] > 0 and stage["peak_rss_mib"] > 0 and stage["rate_counts"]
        config = (work / "tiny" / name / "rlhf_config.yaml").read_text()
        assert "quantization: 4bit" in config and "optim: paged_adamw_8bit" in config  # the recipe's QLoRA path
        assert "seed: 7" in config
        expected_new_tokens = {"ppo": 8, "grpo": 6}.get(name)
        if expected_new_tokens:
            assert f"max_new_tokens: {expected_new_tokens}" in config
            # answers are scored at about the length sampled: 0.27 when ids beyond the tiny tokenizer's decode to
            # nothing; measured 1.10 and 1.31, as an answer's first word loses its space to strip() and splits into
            # letters (two more tokens of 6 or 8; of 128 on a GPU)
            assert 0.9 < stage["decoded_over_sampled"] < 1.6
    assert model["ppo_over_sft_peak"] > 0 and model["grpo_over_sft_peak"] > 0
    # sharded: ppo under torchrun on 2 CPU processes, each reporting its peak; TRL's trainers skipped, with why
    assert set(model["sharded"]) == {"ppo"} and model["sharded_processes"] == 2
    sharded = model["sharded"]["ppo"]
    assert not sharded.get("failed") and sharded["measured_steps"] == 2
    assert len(sharded["ranks"]) == 2 and all(rank["peak_rss_mib"] > 0 for rank in sharded["ranks"])
    assert "fsdp: full_shard" in (work / "tiny" / "ppo-sharded" / "rlhf_config.yaml").read_text()
    assert (
        "sharded sft, reward, dpo, kto skipped on CPU: Accelerate shards TRL's trainers on GPUs only"
        in (results["notes"])
    )
    assert "tiny: ppo sharded, peak RSS MiB per process: " in done.stdout
    with tarfile.open(out / "gpu_check-logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"preflight.log", "tiny-build.log", "tiny-sft.log", "tiny-grpo.log", "tiny/ppo/metrics.jsonl"} <= names
