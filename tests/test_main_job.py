"""The README's main job, end to end on the tiny default, with the figures it must reach."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import RECIPES, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import data, models
from rlhf.policy import sampling
from rlhf.results import EvalResult, PPOResult, RewardResult, SFTResult
from rlhf.tiny import task


def gold_score(model_path: str, seeds: tuple[int, ...] = (0, 1)) -> float:
    """Mean gold-judge score of a model's sampled answers to every held-out prompt (the toolkit's sampler)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0]]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos_ids, pad = sampling.eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    settings = sampling.SamplingSettings(max_new_tokens=40, temperature=1.0)
    scores = []
    for seed in seeds:
        torch.manual_seed(seed)
        response = sampling.sample(model, batch["input_ids"], batch["attention_mask"], settings, eos_ids, pad)
        response, _, _ = sampling.cut_at_eos(response, eos_ids, pad)
        answers = sampling.decode(tokenizer, response, eos_ids, pad)
        scores += [task.score(p, a) for p, a in zip(prompts, answers, strict=True)]
    return sum(scores) / len(scores)


@pytest.mark.slow
def test_readme_pipeline_on_the_tiny_default(tmp_path: Path) -> None:
    """`rlhf pipeline --recipe recipes/tiny`, the README's main job: every stage shows real learning."""
    out = tmp_path / "tiny"
    run_cli("pipeline", "--recipe", str(RECIPES / "tiny"), "--output_dir", str(out), "--disable_tqdm", "true")
    assert (out / "report.html").is_file()

    sft = SFTResult.read(out / "sft")
    assert sft.eval_loss is not None and sft.first_eval_loss is not None and sft.eval_loss < sft.first_eval_loss
    # SFT shifts which kind of answer the model gives; the gold judge sees it (measured 0.15 -> 0.44)
    assert gold_score(str(out / "sft" / "merged")) > gold_score(models.resolve_model_path("builtin:tiny")) + 0.12

    reward = RewardResult.read(out / "reward").eval
    assert reward is not None and reward.accuracy > 0.68, reward  # chance 0.5; simulated annotators' pairs, ~0.75
    assert reward.chosen.p50 > reward.rejected.p50

    # the critic starts on the scale of its returns (-0.07 before its head was fitted, +0.02 measured)
    assert PPOResult.read(out / "ppo").first_iteration["value/explained_variance"] >= 0

    evaluation = EvalResult.read(out / "eval")
    gold = evaluation.win_rate["gold"]
    assert gold.ci_low > 0.5, gold  # PPO beats SFT on the gold judge, beyond the 95% interval
    assert evaluation.ppo.gold is not None and evaluation.sft.gold is not None
    assert evaluation.ppo.gold > evaluation.sft.gold + 0.3, evaluation
    assert evaluation.reward_model is not None and evaluation.reward_model.accuracy > 0.68
