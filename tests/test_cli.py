"""The `rlhf` command: help for every option, and clear errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import RECIPES

from rlhf.cli import main


def _rlhf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlhf", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "reward", "ppo", "data"):
        assert f"  {command}" in out


def test_stage_help_lists_every_option_with_its_meaning() -> None:
    result = _rlhf("sft", "--help")
    assert result.returncode == 0
    for option, words in (
        ("--quantization", "NF4"),
        ("--merge_adapter", "merged"),
        ("--learning_rate", "learning rate"),
        ("--overlong", "drop"),
    ):
        assert option in result.stdout and words.lower() in result.stdout.lower()


def test_config_errors_exit_2_with_the_message(tmp_path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((RECIPES / "tiny" / "sft.yaml").read_text() + "\nlora_rank: 8\n")
    result = _rlhf("sft", "--config", str(recipe))
    assert result.returncode == 2
    assert "bad.yaml: unknown key 'lora_rank'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command(capsys) -> None:
    assert main(["dpo"]) == 2
    assert "unknown command 'dpo'" in capsys.readouterr().err


def test_data_tiny_writes_jsonl_that_validates(tmp_path) -> None:
    assert main(["data", "tiny", "--out", str(tmp_path)]) == 0
    assert main(["data", "check", "--kind", "preference", "--dataset", str(tmp_path / "pairs")]) == 0
    assert main(["data", "check", "--kind", "sft", "--dataset", str(tmp_path / "sft" / "train.jsonl")]) == 0


def test_one_flag_style_both_spellings_everywhere_and_a_did_you_mean(tmp_path, capsys) -> None:
    """`rlhf export --run-dir` and `rlhf feedback export --test_fraction` both work; a typo names the option."""
    from rlhf.cli import main

    assert main(["export", "--run-dir", str(tmp_path)]) == 2  # parsed; refused only for having no adapter
    assert "no adapter" in capsys.readouterr().err
    db = f"sqlite:///{tmp_path / 'f.db'}"
    assert main(["feedback", "migrate", "--db", db]) == 0
    assert main(["feedback", "progress", "--db", db, "--json"]) == 0
    out = tmp_path / "out"
    main(["feedback", "export", "--db", db, "--format", "pairs", "--out", str(out), "--test_fraction", "0.2"])
    assert "unknown option" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["feedback", "export", "--db", db, "--format", "pairs", "--out", str(out), "--test_fractio", "0.2"])
    assert "unknown option '--test_fractio' (did you mean '--test_fraction'?)" in capsys.readouterr().err
