"""The README's main job, end to end on the tiny default, with the figures it must reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import RECIPES, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import data, models, runs
from rlhf.tiny import task


def gold_score(model_path: str, seeds: tuple[int, ...] = (0, 1)) -> float:
    """Mean gold-judge score of a model's sampled answers to every held-out prompt."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0]]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    scores = []
    for seed in seeds:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                **batch, do_sample=True, temperature=1.0, max_new_tokens=40, pad_token_id=tokenizer.pad_token_id
            )
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        scores += [task.score(p, a.strip()) for p, a in zip(prompts, answers, strict=True)]
    return sum(scores) / len(scores)


@pytest.mark.slow
def test_tiny_sft_then_reward_as_in_the_readme(tmp_path: Path) -> None:
    sft_dir, reward_dir = tmp_path / "sft", tmp_path / "reward"
    run_cli(
        "sft", "--config", str(RECIPES / "tiny" / "sft.yaml"), "--output_dir", str(sft_dir), "--disable_tqdm", "true"
    )
    run_cli(
        "reward",
        "--config",
        str(RECIPES / "tiny" / "reward.yaml"),
        "--output_dir",
        str(reward_dir),
        "--model_name_or_path",
        str(sft_dir / "merged"),
        "--disable_tqdm",
        "true",
    )
    sft = runs.read_metrics(sft_dir)
    assert sft["eval_loss"] < sft["first_eval_loss"]
    # SFT shifts which kind of answer the model gives; the gold judge sees it (measured 0.15 -> 0.44)
    assert gold_score(str(sft_dir / "merged")) > gold_score(models.resolve_model_path("builtin:tiny")) + 0.12
    reward = runs.read_metrics(reward_dir)["eval"]
    assert reward["accuracy"] > 0.72, reward  # chance 0.5; ~0.8 measured
    assert reward["chosen"]["p50"] > reward["rejected"]["p50"]
