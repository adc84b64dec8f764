"""The sft and reward stages on the tiny model: they learn, save what the ecosystem loads, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, run_cli, tensorboard_scalars
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from rlhf import models, runs
from rlhf.arguments import ModelArguments, StageConfig
from rlhf.config import from_options, parse
from rlhf.results import RewardResult, SFTResult
from rlhf.stages import reward, sft
from rlhf_core.errors import ConfigError, DataError


def _parsed(stage: str, out: Path, *overrides: str):
    types = {"sft": sft.CONFIG_TYPES, "reward": reward.CONFIG_TYPES}[stage]
    recipe = RECIPES / "tiny" / f"{stage}.yaml"
    return parse(
        types,
        ["--config", str(recipe), "--output_dir", str(out), "--disable_tqdm", "true", *overrides],
        prog="t",
        description="",
    )


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_sft_learns_and_changes_every_trainable_parameter_and_nothing_else(tmp_path: Path) -> None:
    trainer = sft.build(
        *_parsed("sft", tmp_path, "--max_steps", "30", "--eval_strategy", "no", "--save_strategy", "no")
    )
    eval_loss_before = trainer.evaluate()["eval_loss"]
    before = _trainable(trainer.model)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert all("lora_" in n for n in before) and before
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged[:5]}"
    assert all(torch.equal(p, after[n]) for n, p in frozen.items())
    assert trainer.evaluate()["eval_loss"] < eval_loss_before  # the same 200 held-out conversations


def _chat_ids(tokenizer) -> torch.Tensor:
    messages = [
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "Sure! 3 plus 4 is 7."},
    ]
    return torch.tensor([tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]])


def _base_as_trained(run_dir: Path, tokenizer) -> PreTrainedModel:
    """The run's base model loaded as its resolved config says (quantization included)."""
    (model_args,) = from_options([ModelArguments], runs.read_config(run_dir))
    return models.load_causal_lm(model_args, tokenizer)


def test_sft_run_writes_an_adapter_that_plain_peft_loads_with_the_same_logits(
    tiny_sft_run: Path, tiny_tokenizer
) -> None:
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "rlhf_config.yaml",
    ):
        assert (tiny_sft_run / name).is_file(), name
    result = SFTResult.read(tiny_sft_run)
    assert result.eval_loss is not None and result.first_eval_loss is not None
    assert result.eval_loss < result.first_eval_loss  # eval_on_start gives the untrained loss
    assert result.tokens_seen and result.loss_tokens_per_epoch > 0
    assert result.length_policy["train"].dropped == 0

    # the base as the run loaded it (4-bit for the QLoRA recipe), plus the adapter: the model as trained
    model = PeftModel.from_pretrained(_base_as_trained(tiny_sft_run, tiny_tokenizer), str(tiny_sft_run)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tiny_sft_run / "merged").eval()
    ids = _chat_ids(tiny_tokenizer)
    with torch.no_grad():
        adapted, merged_logits = model(ids).logits, merged(ids).logits
        with model.disable_adapter():
            base_logits = model(ids).logits
    assert torch.allclose(adapted, merged_logits, atol=1e-4)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)


def test_sft_adapter_gives_the_logits_it_had_in_training(tmp_path: Path, tiny_tokenizer) -> None:
    parsed = _parsed("sft", tmp_path, "--max_steps", "5", "--eval_strategy", "no", "--save_strategy", "no")
    trainer = sft.build(*parsed)
    trainer.train()
    trainer.save_model(str(tmp_path))
    ids = _chat_ids(tiny_tokenizer)
    trainer.model.eval()
    with torch.no_grad():
        in_training = trainer.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(models.load_causal_lm(parsed[0], tiny_tokenizer), str(tmp_path))
        reloaded_logits = reloaded.eval()(input_ids=ids).logits
    assert torch.allclose(in_training, reloaded_logits, atol=1e-5)


def test_sft_four_bit_path_with_paged_8bit_adamw(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    trainer = sft.build(
        *_parsed(
            "sft",
            tmp_path,
            "--quantization",
            "4bit",
            "--optim",
            "paged_adamw_8bit",
            "--max_steps",
            "3",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--max_train_samples",
            "96",
            "--per_device_train_batch_size",
            "8",
        )
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    before = _trainable(trainer.model)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit) and optimizer.is_paged
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in before.items() if "lora_B" in n)


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    """`--resume` in a folder with no checkpoint is an error (resume itself: tests/test_resume.py)."""
    with pytest.raises(ConfigError, match="no checkpoint"):
        sft.run(StageConfig(*_parsed("sft", tmp_path / "fresh", "--resume", "--max_steps", "1")))


def test_sft_reports_and_drops_overlong_rows(tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "What is 1 plus 1?"},
                {"role": "assistant", "content": "1 plus 1 is 2."},
            ]
        }
    ] * 20
    rows.append(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "1 plus 1 is 2. " * 40}]}
    )
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = sft.build(
        *_parsed("sft", tmp_path / "run", "--dataset_name", str(data), "--eval_split_size", "0", "--max_length", "64")
    )
    assert len(trainer.train_dataset) == 20
    report = trainer.length_reports["train"]
    assert (report.rows, report.overlong, report.dropped) == (21, 1, 1)
    with pytest.raises(DataError, match=r"1 of 21 rows are longer than max_length=64 tokens \(rows 21\)"):
        sft.build(
            *_parsed(
                "sft",
                tmp_path / "run",
                "--dataset_name",
                str(data),
                "--eval_split_size",
                "0",
                "--max_length",
                "64",
                "--overlong",
                "error",
            )
        )


def test_sft_writes_tensorboard_logs_when_asked(tmp_path: Path) -> None:
    run_cli(
        "sft",
        "--config",
        str(RECIPES / "tiny" / "sft.yaml"),
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--merge_adapter",
        "false",
        "--report_to",
        "tensorboard",
        "--disable_tqdm",
        "true",
    )
    history = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    losses = [(entry["step"], pytest.approx(entry["loss"], rel=1e-6)) for entry in history if "loss" in entry]
    assert len(losses) == 2 and tensorboard_scalars(tmp_path / "runs", "train/loss") == losses


def test_reward_model_ranks_held_out_pairs_and_reports_distributions(tiny_reward_run: Path) -> None:
    held_out = RewardResult.read(tiny_reward_run).eval
    assert held_out is not None and held_out.pairs == 600
    # chance is 0.5 (600 pairs: one standard error is 0.02); this shortened run reaches ~0.65, the full recipe ~0.8
    assert held_out.accuracy > 0.6
    assert held_out.chosen.mean > held_out.rejected.mean
    assert held_out.chosen.p10 <= held_out.chosen.p50 <= held_out.chosen.p90


@pytest.mark.slow
def test_reward_model_reloads_in_a_fresh_process_with_the_same_scores(tiny_reward_run: Path) -> None:
    script = (
        "import json, sys\n"
        "from datasets import Dataset\n"
        "from rlhf import data, models\n"
        "from rlhf.stages.reward import score_sequences\n"
        "model, tokenizer = models.load_reward_model(sys.argv[1])\n"
        "rows = data.load_split('builtin:tiny/pairs', 'test')[0][:40]\n"
        "ids = [data.preference_ids(r, tokenizer) for r in rows]\n"
        "print(json.dumps(score_sequences(model, [i['chosen_ids'] for i in ids], tokenizer.pad_token_id)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tiny_reward_run)], capture_output=True, text=True, check=True
    )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    saved = [
        json.loads(line)["chosen"] for line in (tiny_reward_run / reward.SCORES_FILE).read_text().splitlines()[:40]
    ]
    assert fresh == pytest.approx(saved, abs=1e-4)


def test_reward_changes_lora_and_score_head_only(tmp_path: Path, tiny_sft_run: Path) -> None:
    trainer, _ = reward.build(
        *_parsed(
            "reward",
            tmp_path,
            "--model_name_or_path",
            str(tiny_sft_run / "merged"),
            "--max_steps",
            "5",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
        )
    )
    before = _trainable(trainer.model)
    assert any("score" in n for n in before)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in before.items())


def test_reward_refuses_truncation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="truncate would cut off"):
        reward.build(*_parsed("reward", tmp_path, "--model_name_or_path", "builtin:tiny", "--overlong", "truncate"))
