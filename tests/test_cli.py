"""The `rlhf` command: help for every option, and clear errors with exit code 2."""

from __future__ import annotations

import pytest
from conftest import RECIPES

from rlhf.cli import main


def test_top_level_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "reward", "ppo", "data"):
        assert f"  {command}" in out


def test_stage_help_lists_every_option_with_its_meaning(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # in this process: a new interpreter would import torch again
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option, words in (
        ("--quantization", "NF4"),
        ("--merge_adapter", "merged"),
        ("--learning_rate", "learning rate"),
        ("--overlong", "drop"),
    ):
        assert option in out and words.lower() in out.lower()


def test_config_errors_exit_2_with_the_message(tmp_path, capsys) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((RECIPES / "tiny" / "sft.yaml").read_text() + "\nlora_rank: 8\n")
    assert main(["sft", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: unknown key 'lora_rank'" in err
    assert "Traceback" not in err


def test_unknown_command(capsys) -> None:
    assert main(["dpp"]) == 2
    assert "unknown command 'dpp'" in capsys.readouterr().err


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


def test_stage_help_puts_our_options_first_grouped_in_plain_text(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal: measure at the usual width
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    titles = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert [t.split(" ")[0] for t in titles[:4]] == ["model", "data", "training", "sft"]
    assert all(t.startswith("other options of ") for t in titles[4:]) and len(titles) > 4
    # ours (and the few TRL options recipes set) described, before any other TRL/transformers option
    first_other = out.index("other options of ")
    for option in ("--quantization", "--overlong", "--columns", "--learning_rate", "--merge_adapter", "--resume"):
        assert out.index(option) < first_other
    assert "--packing" not in out and "packing," in out[first_other:]  # TRL's others: by name only
    for markup in ("`", ":class:", "](", "<Tip", "%%"):
        assert markup not in out
    assert len(out.splitlines()) < 300  # 272 at 80 columns (900 before ours came first)


def test_help_all_describes_every_option_in_plain_text(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dpo", "--help-all"])
    out = capsys.readouterr().out
    assert "--packing" not in out  # not a DPO option
    for option in ("--beta", "--precompute_ref_log_probs", "--adam_beta1", "--use_rslora"):
        assert option in out
    assert "other options of TRL's DPOConfig:" in out
    for markup in ("`", ":class:", "](", "<Tip", "%%"):
        assert markup not in out


def test_plain_strips_markup() -> None:
    from rlhf.config import plain

    text = "See :class:`~transformers.Trainer`, ``x`` and `y`, the [paper](https://a.b/c).\n<Tip>Mind <sft dir>.</Tip>"
    text += " 20%%"
    assert plain(text) == "See transformers.Trainer, x and y, the paper (https://a.b/c). Mind <sft dir>. 20%"


def test_a_command_that_joined_a_process_group_leaves_it(tmp_path, monkeypatch) -> None:
    """Under torchrun a stage joins a process group; the command leaves it when done, every process together,
    rather than leaving gloo's threads to the interpreter's exit (which aborted a finished run once in CI)."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29613")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert main(["data", "tiny", "--out", str(tmp_path)]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
