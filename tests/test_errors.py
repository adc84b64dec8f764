"""Mistakes a new user makes outside the happy path: each is one line naming the option, file or stage and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from conftest import RECIPES
from huggingface_hub.errors import RepositoryNotFoundError

from rlhf import models
from rlhf.cli import main
from rlhf.tiny.build import MODEL_DIR
from rlhf_core.options import ArgumentParser


def _one_line(err: str) -> str:
    """The error a command printed: exactly one line (log lines of the libraries aside), and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING ", "INFO "))]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_stage_without_a_model_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reward", "--output_dir", str(tmp_path / "reward")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rlhf reward: error: model_name_or_path: not set")
    assert "--model_name_or_path" in line and "<sft output_dir>/merged" in line


def test_a_missing_sft_model_names_the_command_that_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside the repository: SFT writes <output_dir>/merged, so the advice names the folder above it."""
    monkeypatch.chdir(tmp_path)
    assert main(["reward", "--config", str(RECIPES / "tiny" / "reward.yaml")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "runs/tiny/sft/merged: no such folder" in line
    assert "`rlhf sft --config <your sft recipe> --output_dir runs/tiny/sft --merge_adapter true`" in line
    # in a checkout of the repository the recipe that writes it is named
    monkeypatch.chdir(RECIPES.parent)
    hint = models.producer_hint(Path("runs/tiny/sft/merged"))
    assert "`rlhf sft --config recipes/tiny/sft.yaml --output_dir runs/tiny/sft --merge_adapter true`" in hint


def test_a_misspelt_hub_id_offline_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "Qwen/Qwen2.5-0.5B-Instrct"
    argv = ["reward", "--model_name_or_path", name, "--dataset_name", "builtin:tiny/pairs"]
    assert main([*argv, "--output_dir", str(tmp_path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"model_name_or_path: {name}: not a local folder, and not in the hub cache" in line
    assert "HF_HUB_OFFLINE" in line and f"`hf download {name}`" in line


def test_a_hub_id_the_hub_does_not_know_says_check_the_spelling() -> None:
    """Online, the hub answers 404: transformers' OSError over the hub's RepositoryNotFoundError."""
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x/y"))
    try:
        try:
            raise RepositoryNotFoundError("404 Client Error", response=response)
        except RepositoryNotFoundError as missing:
            raise OSError("x/y is not a local folder and is not a valid model identifier\nmore lines") from missing
    except OSError as error:
        assert models.why_not_loadable("x/y", error).startswith("not a local folder nor a model on the hub: check the")


def test_a_model_folder_without_a_tokenizer_says_where_to_get_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(MODEL_DIR / name, folder / name)
    argv = ["reward", "--model_name_or_path", str(folder), "--dataset_name", "builtin:tiny/pairs"]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"model_name_or_path: {folder}: the folder has no tokenizer" in line
    assert "tokenizer_name_or_path" in line and "sentencepiece" not in line


def test_bf16_without_a_gpu_that_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    import transformers.utils

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: False)
    recipe = ["sft", "--config", str(RECIPES / "tiny" / "sft.yaml"), "--output_dir", str(tmp_path)]
    assert main([*recipe, "--bf16", "true"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rlhf sft: error: bf16: true needs a GPU with bf16")
    assert "leave bf16 unset" in line and "use_cpu: true" in line
    assert str(RECIPES) not in line  # the option is named, not the recipe it did not come from

    from rlhf.config import parse
    from rlhf.stages import sft

    *_, training = parse(
        sft.CONFIG_TYPES, [*recipe[1:], "--bf16", "true", "--use_cpu", "true"], prog="", description=""
    )
    assert training.bf16 and training.use_cpu  # CPU autocast, as the advice says


def test_ppo_max_steps_points_to_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ppo", "--max_steps", "2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--max_steps is not an option" in line and "--steps 2" in line
    assert "save_steps" not in line


def test_eval_ppo_dir_points_to_run_dir(capsys: pytest.CaptureFixture[str]) -> None:
    """`rlhf eval` judges any trained policy (ppo, dpo, kto): its folder option is --run_dir."""
    assert main(["eval", "--ppo_dir", "runs/tiny/dpo"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--ppo_dir is not an option" in line and "--run_dir" in line


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("grpo", "rlhf ppo --advantage_estimator grpo"),
        ("rloo", "rlhf ppo --advantage_estimator rloo"),
        ("reinforce++", "rlhf ppo --advantage_estimator reinforce_pp"),
        ("dr_grpo", "rlhf ppo --advantage_estimator grpo --scale_rewards false --loss_type dr_grpo"),
    ],
)
def test_an_algorithm_that_is_not_a_command_names_the_one_that_runs_it(
    name: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([name]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"rlhf: {name!r} is not a command") and f"`{command}" in line


def test_grpo_names_a_recipe_that_exists(capsys: pytest.CaptureFixture[str]) -> None:
    main(["grpo"])
    line = _one_line(capsys.readouterr().err)
    recipe = line.split("rlhf ppo --config ")[1].split("`")[0]
    assert (RECIPES.parent / recipe).is_file()


def test_report_takes_both_spellings_of_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["report", "--run-dir", str(tmp_path), "--samples", "2"])
    err = capsys.readouterr().err
    assert "required" not in err and "unrecognized" not in err


def test_argparse_commands_take_both_spellings_and_refuse_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="rlhf x")
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--num-candidates", type=int, default=4)
    args = parser.parse_args(["--run-dir", "a", "--num_candidates=3"])
    assert (args.run_dir, args.num_candidates) == ("a", 3)
    assert parser.parse_args(["--run_dir", "b", "--num-candidates", "5"]).num_candidates == 5
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--num_candidates", "2"])
    assert exit_info.value.code == 2
    assert _one_line(capsys.readouterr().err) == (
        "rlhf x: error: the following arguments are required: --run_dir; see rlhf x --help"
    )


def test_a_tracker_that_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    recipe = ["sft", "--config", str(RECIPES / "tiny" / "sft.yaml"), "--output_dir", str(tmp_path)]
    assert main([*recipe, "--report_to", "wandb"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert (
        line
        == "rlhf sft: error: report_to: wandb is not installed: `pip install wandb`, or report to tensorboard or none"
    )
    assert main([*recipe, "--report_to", "wandbb"]) == 2
    assert "(did you mean 'wandb'?)" in _one_line(capsys.readouterr().err)


def test_ppo_refuses_a_tracker_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RL stage logs through accelerate.tracking: any of its trackers, checked before anything loads."""
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard"])
    assert main(["ppo", "--report_to", "wandb"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert (
        line
        == "rlhf ppo: error: report_to: wandb is not installed: `pip install wandb`, or report to tensorboard or none"
    )
    assert main(["ppo", "--report_to", "tensorbord"]) == 2
    assert "(did you mean 'tensorboard'?)" in _one_line(capsys.readouterr().err)
    # a tracker accelerate knows and transformers does not (and the reverse) is judged by accelerate's list
    assert main(["ppo", "--report_to", "aim"]) == 2
    assert "report_to: aim is not installed: `pip install aim`" in _one_line(capsys.readouterr().err)
    assert main(["ppo", "--report_to", "neptune"]) == 2
    assert "report_to: 'neptune' is not a tracker; one of ['aim', " in _one_line(capsys.readouterr().err)


def test_a_hub_dataset_that_cannot_be_loaded_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "--kind", "sft", "--dataset", "trl-lib/Capybarra"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rlhf data: error: trl-lib/Capybarra: not a local file or folder, and the hub cannot")
    assert "`hf download --repo-type dataset trl-lib/Capybarra`" in line
