"""The sampler is the policy: rollouts are drawn from exactly the distribution PPO recomputes.

The base here is the tiny SFT model saved with the generation config a real instruct model ships
(Qwen2.5-Instruct-like: repetition penalty, top-k, top-p, a low temperature) and two EOS ids, as
Llama 3 lists several. None of that may leak into PPO's rollouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXTRA_EOS

from rlhf import data, models
from rlhf.arguments import ModelArguments
from rlhf.policy import engine, sampling
from rlhf.policy.roles import SharedBase
from rlhf.policy.sampler import PolicySampler
from rlhf.ppo.config import PPOConfig


@pytest.fixture(scope="module")
def sampler(opinionated_base: Path, tiny_reward_run: Path, tmp_path_factory: pytest.TempPathFactory) -> PolicySampler:
    model_args = ModelArguments(model_name_or_path=str(opinionated_base), quantization="4bit", lora_r=8, lora_alpha=16)
    config = PPOConfig(output_dir=str(tmp_path_factory.mktemp("ppo")), temperature=0.9, max_new_tokens=24)
    models.resolve_dtypes(model_args, config)
    tokenizer = models.load_tokenizer(model_args)
    base = models.load_causal_lm(model_args, tokenizer)
    assert base.generation_config.repetition_penalty == 1.3  # the saved config is there to be inherited
    roles = SharedBase(base, models.lora_config(model_args, "CAUSAL_LM"), tiny_reward_run)
    return PolicySampler.from_config(roles, tokenizer, config, config, models.autocast_dtype(config))


def test_every_declared_eos_id_ends_an_answer(sampler: PolicySampler) -> None:
    tokenizer = sampler.tokenizer
    extra = tokenizer.convert_tokens_to_ids(EXTRA_EOS)
    assert set(sampler.eos_ids) == {tokenizer.eos_token_id, extra}
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0][:32]]
    torch.manual_seed(0)
    rollout = sampler.generate(prompts)
    last = rollout.mask.sum(1).long() - 1
    final_tokens = rollout.response[torch.arange(len(prompts)), last]
    assert (final_tokens[rollout.ended] == extra).any()  # some answers stopped at the second id...
    assert (final_tokens[rollout.ended] == tokenizer.eos_token_id).any()  # ...and some at the first
    inside = rollout.response.masked_fill(~rollout.mask.bool(), tokenizer.pad_token_id)
    for row, stop in enumerate(last.tolist()):  # no EOS before the one that ended the answer
        assert not torch.isin(inside[row, :stop], torch.tensor(sampler.eos_ids)).any()
    assert all(EXTRA_EOS not in text for text in rollout.texts)


SETTINGS = [  # (temperature, top_p, top_k): the base's saved repetition penalty, top-k and top-p must not leak
    (0.9, 1.0, 0),
    (1.0, 1.0, 0),
    (0.7, 0.8, 0),
    (1.0, 1.0, 8),
    (0.8, 0.9, 20),
]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
def test_sampled_tokens_have_the_log_probs_ppo_recomputes(
    sampler: PolicySampler, temperature: float, top_p: float, top_k: int
) -> None:
    """Log-probs under the distribution each token was drawn from == PPO's recomputed ones (<= 1e-4).

    At each setting of temperature, top-p and top-k, on a base whose saved generation config sets a
    repetition penalty, no-repeat n-grams, its own top-k/top-p and two EOS ids: the distribution
    generate() draws from (its processed scores) is the one the trainer's ratio uses.
    """
    settings = sampling.SamplingSettings(24, temperature, top_p, top_k)
    reference = engine.TransformersEngine(sampler.roles.peft, sampler.eos_ids, sampler.tokenizer.pad_token_id, True)
    policy = PolicySampler(sampler.roles, sampler.tokenizer, settings, rollout_engine=reference)
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0][:32]]
    torch.manual_seed(1)
    rollout = policy.generate(prompts)
    sampled = rollout.engine_logprobs  # generate()'s processed scores at the drawn tokens
    assert sampled is not None
    recomputed = policy.logprobs(rollout)
    gap = (sampled - recomputed).abs().max()
    assert gap <= 1e-4, gap
    if settings.truncates:  # the cut matters here: the untruncated softmax is another distribution
        with policy.scoring():
            full = torch.log_softmax(policy.response_logits(rollout, truncated=False), -1)
        untruncated = full.gather(-1, rollout.response[..., None]).squeeze(-1) * rollout.mask
        assert (sampled - untruncated).abs().max() > 1e-2


def test_the_reference_is_measured_as_the_same_sampler(sampler: PolicySampler) -> None:
    """With top-p / top-k the reference's log-probs are under its own cut distribution: KL 0 while policy = reference.

    The policy adapter is fresh (LoRA B = 0), so the policy is the reference: the two samplers are one
    distribution and the KL estimate must be 0 at every token, where a reference measured by its plain
    softmax would differ from the cut policy by the log of the mass the cut removed.
    """
    policy = PolicySampler(sampler.roles, sampler.tokenizer, sampling.SamplingSettings(24, 0.8, 0.7, 10))
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0][:16]]
    torch.manual_seed(2)
    rollout = policy.generate(prompts)
    kl = policy.logprobs(rollout) - policy.logprobs(rollout, reference=True)
    assert kl.abs().max() <= 1e-5
    with policy.scoring(), policy.roles.reference():
        plain = torch.log_softmax(policy.response_logits(rollout, truncated=False), -1)
    plain = plain.gather(-1, rollout.response[..., None]).squeeze(-1) * rollout.mask
    assert (policy.logprobs(rollout) - plain).abs().max() > 1e-2


def test_generation_config_leaves_nothing_to_inherit(sampler: PolicySampler) -> None:
    """What generate() ends up using: the PPO config's settings, every other knob at its neutral default."""
    model = sampler.roles.causal_lm
    ours = sampling.generation_config(sampler.settings, sampler.eos_ids, sampler.tokenizer.pad_token_id)
    with sampling._no_saved_defaults(model):
        effective, _ = model._prepare_generation_config(ours)
    assert effective.temperature == 0.9 and effective.top_k == 0 and effective.top_p == 1.0
    assert effective.repetition_penalty == 1.0 and effective.no_repeat_ngram_size == 0
    assert effective.max_new_tokens == 24 and effective.eos_token_id == sampler.eos_ids
    assert json.loads(model.generation_config.to_json_string())["repetition_penalty"] == 1.3  # restored after
