"""Every rollout engine against the reference one (generate() on the training model): the seam's contract.

Same prompts, greedy: the same tokens, EOS flags and texts, for the policy, the reference (adapters
disabled) and the policy after it changed (the engine synced); K answers per prompt as candidate
generation asks for them. Sampled: the engine's own log-probs (where it reports
them) are the ones the trainer recomputes, and the update uses the trainer's, never the engine's.

The base is the tiny SFT model saved with a generation config that sets everything a sampler could
inherit and two EOS ids (``opinionated_base``), in 4-bit NF4 (the recipes' QLoRA base) and in full
precision, with a policy LoRA that is not zero (so policy and reference answer differently). A new
engine plugs in as one more entry of ``ENGINES``: a factory over the shared base's PEFT model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ppo_args

from rlhf import candidates, data, models
from rlhf.arguments import ModelArguments
from rlhf.config import parse
from rlhf.policy import engine, sampling
from rlhf.policy.roles import POLICY, SharedBase
from rlhf.policy.sampler import PolicySampler, Samples
from rlhf.ppo.config import PPOConfig
from rlhf.stages import ppo
from rlhf_core.errors import ConfigError

Factory = Callable[[torch.nn.Module, list[int], int], engine.RolloutEngine]
ENGINES: dict[str, Factory] = {
    "transformers": lambda model, eos, pad: engine.TransformersEngine(model, eos, pad, logprobs=True),
    "merged": engine.MergedEngine,
}
GREEDY = sampling.SamplingSettings(24, top_k=1)  # top-k 1 keeps the argmax alone: greedy decoding
SAMPLED = [  # (temperature, top_p, top_k)
    (1.0, 1.0, 0),
    (0.7, 0.8, 0),
    (0.8, 0.9, 20),
]


@pytest.fixture(scope="module", params=["4bit", "none"])
def roles(request: pytest.FixtureRequest, opinionated_base: Path) -> tuple[SharedBase, Any]:
    """A shared base without reward model or critic, and its tokenizer: all sampling needs."""
    model_args = ModelArguments(
        model_name_or_path=str(opinionated_base), quantization=request.param, lora_r=8, lora_alpha=16
    )
    models.resolve_dtypes(model_args)
    tokenizer = models.load_tokenizer(model_args)
    base = models.load_causal_lm(model_args, tokenizer)
    shared = SharedBase(base, models.lora_config(model_args, "CAUSAL_LM"), None, value_init=None)
    _move_policy(shared, seed=0)
    return shared, tokenizer


def _move_policy(roles: SharedBase, seed: int) -> None:
    """Give the policy LoRA a random update (as training would), so the policy is not the reference."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in roles.peft.named_parameters():
            if f"lora_B.{POLICY}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _sampler(roles: tuple[SharedBase, Any], name: str, settings: sampling.SamplingSettings) -> PolicySampler:
    shared, tokenizer = roles
    eos_ids = sampling.eos_token_ids(shared.causal_lm, tokenizer)
    factory = engine.TransformersEngine if name == "reference" else ENGINES[name]
    made = factory(shared.peft, eos_ids, tokenizer.pad_token_id)
    return PolicySampler(shared, tokenizer, settings, rollout_engine=made)


def _prompts(n: int = 32) -> list[Any]:
    return [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "test")[0][:n]]


def _same_answers(got: Samples, want: Samples) -> None:
    assert got.response.shape == want.response.shape
    assert torch.equal(got.response, want.response)
    assert torch.equal(got.mask, want.mask) and torch.equal(got.ended, want.ended)
    assert got.texts == want.texts


@pytest.mark.parametrize("name", ENGINES)
def test_greedy_answers_are_the_reference_engines(roles: tuple[SharedBase, Any], name: str) -> None:
    """Policy and reference, before and after the policy moves: the engine syncs to the model as it is."""
    reference, tested = _sampler(roles, "reference", GREEDY), _sampler(roles, name, GREEDY)
    prompts = _prompts()
    answers = []
    try:
        for seed in (1, 2):  # the same engine object across a change of the policy: sync must follow it
            _move_policy(roles[0], seed)
            for as_reference in (False, True):
                want = reference.generate(prompts, reference=as_reference)
                _same_answers(tested.generate(prompts, reference=as_reference), want)
                answers.append(want.texts)
    finally:
        _move_policy(roles[0], 0)
    policy_1, sft_1, policy_2, sft_2 = answers
    assert sft_1 == sft_2  # the reference has no adapter to move
    assert policy_1 != sft_1 and policy_2 != policy_1  # so the comparisons above could tell policies apart


@pytest.mark.parametrize("as_reference", [False, True])
@pytest.mark.parametrize("name", ENGINES)
def test_candidates_answer_each_prompt_in_consecutive_rows(
    roles: tuple[SharedBase, Any], name: str, as_reference: bool
) -> None:
    """K answers per prompt (candidate generation, :func:`rlhf.candidates.sample_sets`), from the policy or the
    model without it: greedy, each copy is the reference's."""
    prompts = _prompts(8)
    want = _sampler(roles, "reference", GREEDY).generate(prompts, reference=as_reference).texts
    got = candidates.sample_sets(_sampler(roles, name, GREEDY), prompts, 3, reference=as_reference)
    assert got == [[text] * 3 for text in want]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SAMPLED)
@pytest.mark.parametrize("name", ENGINES)
def test_sampled_log_probs_are_the_ones_the_trainer_recomputes(
    roles: tuple[SharedBase, Any], name: str, temperature: float, top_p: float, top_k: int
) -> None:
    """The engine's log-prob of each sampled token, under temperature / top-k / top-p, is PPO's recomputed one."""
    sampler = _sampler(roles, name, sampling.SamplingSettings(24, temperature, top_p, top_k))
    torch.manual_seed(1)
    rollout = sampler.generate(_prompts())
    recomputed = sampler.logprobs(rollout)
    reported = rollout.engine_logprobs
    assert reported is not None, f"the {name} engine reports no log-probs: its factory here should ask for them"
    assert reported.shape == recomputed.shape
    gap = (reported - recomputed).abs().max()
    assert gap <= 1e-4, gap
    assert (reported * rollout.mask).sum() < -1.0  # real log-probs, not zeros that would match zeros


@pytest.mark.parametrize("name", ENGINES)
def test_sampled_tokens_follow_the_trainers_distribution(roles: tuple[SharedBase, Any], name: str) -> None:
    """1500 answers to one prompt: each first token is drawn as often as the trainer's probability of it says.

    Log-probs that match say nothing about how often a token is drawn (a sampler that always takes the
    most likely token would report them right); frequencies do, within 5 binomial standard deviations.
    """
    sampler = _sampler(roles, name, sampling.SamplingSettings(1, 0.8, 0.9, 20))  # temperature, top-p, top-k
    torch.manual_seed(3)
    rollout = sampler.generate(_prompts(3)[2:] * 1500)
    first, probability = rollout.response[:, 0], sampler.logprobs(rollout)[:, 0].exp()
    tokens, counts = first.unique(return_counts=True)
    assert len(tokens) >= 4  # a distribution, not one answer
    n = len(first)
    drawn_mass = 0.0
    for token, count in zip(tokens.tolist(), counts.tolist(), strict=True):
        p = float(probability[first == token][0])
        drawn_mass += p
        assert abs(count / n - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1e-3, (token, count / n, p)
    assert drawn_mass >= 0.99  # what was never drawn is next to nothing


def test_draw_picks_each_token_as_often_as_its_probability() -> None:
    probs = torch.tensor([0.1, 0.0, 0.25, 0.05, 0.6, 0.0])
    torch.manual_seed(0)
    drawn = engine.draw(probs.expand(200_000, -1))
    frequency = torch.bincount(drawn, minlength=len(probs)).double() / len(drawn)
    assert frequency[probs == 0].sum() == 0  # outside top-k / top-p: never
    assert (frequency - probs.double()).abs().max() <= 5 * (0.25 / len(drawn)) ** 0.5


@pytest.mark.parametrize("name", ENGINES)
def test_eos_flags_agree_with_the_tokens(roles: tuple[SharedBase, Any], name: str) -> None:
    """An answer has ended iff its last kept token is one of the EOS ids; nothing but padding after it."""
    sampler = _sampler(roles, name, sampling.SamplingSettings(8, 1.0))  # short enough that some answers go on
    torch.manual_seed(2)
    rollout = sampler.generate(_prompts())
    eos = torch.tensor(sampler.eos_ids)
    lengths = rollout.mask.sum(1).long()
    assert torch.equal(rollout.mask, (torch.arange(rollout.mask.shape[1]) < lengths[:, None]).float())
    last = rollout.response[torch.arange(len(lengths)), lengths - 1]
    assert torch.equal(rollout.ended, torch.isin(last, eos))
    assert bool(rollout.ended.any()) and not bool(rollout.ended.all())  # both kinds occur at 8 tokens
    assert (lengths[~rollout.ended] == rollout.mask.shape[1]).all()  # an unended answer used every token
    assert (rollout.response[rollout.mask == 0] == sampler.tokenizer.pad_token_id).all()
    for row, stop in enumerate(lengths.tolist()):  # no EOS before the one that ended the answer
        assert not torch.isin(rollout.response[row, : stop - 1], eos).any()
    if rollout.engine_logprobs is not None:
        assert (rollout.engine_logprobs[rollout.mask == 0] == 0).all()


class _OffBy:
    """An engine whose reported log-probs are ``shift`` nats off: the update must not notice, the metric must."""

    def __init__(self, inner: engine.RolloutEngine, shift: float) -> None:
        self.inner, self.shift = inner, shift
        self.eos_ids, self.pad_token_id, self.device = inner.eos_ids, inner.pad_token_id, inner.device

    def sync(self) -> None:
        self.inner.sync()

    def generate(self, query: torch.Tensor, query_mask: torch.Tensor, settings: Any) -> engine.Rollout:
        rollout = self.inner.generate(query, query_mask, settings)
        assert rollout.logprobs is not None
        return replace(rollout, logprobs=(rollout.logprobs + self.shift) * rollout.mask)


@pytest.mark.parametrize(
    ("name", "shift", "overrides"),
    [
        ("transformers", 0.0, ()),
        ("merged", 0.0, ()),
        ("merged", 0.5, ()),  # the KL in the rewards: the trajectory's log-probs come from a scoring pass
        ("merged", 0.5, ("--advantage_estimator", "grpo", "--kl_coef", "0")),  # measured by the update itself
    ],
)
def test_the_update_uses_the_trainers_log_probs(
    tiny_sft_run: Path,
    tiny_reward_run: Path,
    tmp_path: Path,
    name: str,
    shift: float,
    overrides: tuple[str, ...],
) -> None:
    """One optimizer step per rollout: its ratio is 1 (approx KL 0) against the trainer's recomputed log-probs,
    whatever the engine reported, and ``rollout/logprob_gap`` says how far the engine's were."""
    args = ppo_args(tmp_path, tiny_sft_run, tiny_reward_run, "--ppo_epochs", "1", "--mini_batch_size", "16", *overrides)
    trainer = ppo.build(*parse(ppo.CONFIG_TYPES, args, prog="t", description=""))
    assert trainer.measures_in_update == bool(overrides)
    sampler = trainer.sampler
    made = ENGINES[name](trainer.roles.peft, sampler.eos_ids, trainer.tokenizer.pad_token_id)
    sampler.engine = _OffBy(made, shift) if shift else made
    metrics = trainer.train_step()
    assert metrics["policy/approx_kl"] <= 1e-6 and metrics["policy/clipfrac"] == 0.0
    assert metrics["rollout/logprob_gap"] == pytest.approx(shift, abs=1e-4)


def test_auto_picks_the_merged_engine_only_where_it_is_the_same_policy_and_small(
    roles: tuple[SharedBase, Any], opinionated_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, tokenizer = roles
    eos_ids, pad = sampling.eos_token_ids(shared.causal_lm, tokenizer), tokenizer.pad_token_id
    assert isinstance(engine.build("auto", shared.peft, eos_ids, pad), engine.MergedEngine)  # float32 compute
    # the copy: a float32 matrix per linear layer of the decoder layers (each has a LoRA), nothing else
    named = shared.causal_lm.named_modules()
    layers = [m for n, m in named if isinstance(m, torch.nn.Linear) and ".layers." in n and "lora_" not in n]
    assert engine.merged_copy_bytes(shared.peft) == sum(4 * m.in_features * m.out_features for m in layers) > 0
    with monkeypatch.context() as patch:  # beyond auto's size limit: generate(); merged only when named
        patch.setattr(engine, "AUTO_MERGED_MAX_BYTES", engine.merged_copy_bytes(shared.peft) - 1)
        assert isinstance(engine.build("auto", shared.peft, eos_ids, pad), engine.TransformersEngine)
        assert isinstance(engine.build("merged", shared.peft, eos_ids, pad), engine.MergedEngine)
    assert isinstance(engine.build("transformers", shared.peft, eos_ids, pad), engine.TransformersEngine)
    bf16 = engine.build("auto", shared.peft, eos_ids, pad, autocast=torch.bfloat16)
    assert isinstance(bf16, engine.TransformersEngine)
    with pytest.raises(ConfigError, match=r"^rollout_engine: merged would sample in float32 .*bfloat16 autocast"):
        engine.build("merged", shared.peft, eos_ids, pad, autocast=torch.bfloat16)
    with pytest.raises(ConfigError, match=r"^rollout_engine: unknown 'vllm'"):
        engine.build("vllm", shared.peft, eos_ids, pad)
    (option,) = [f for f in dataclasses.fields(PPOConfig) if f.name == "rollout_engine"]
    assert tuple(option.metadata["choices"]) == engine.ENGINES  # what a recipe may name is what build() knows
    args = ModelArguments(
        model_name_or_path=str(opinionated_base), quantization="4bit", bnb_4bit_compute_dtype="bfloat16"
    )
    models.resolve_dtypes(args)
    bf16_base = models.load_causal_lm(args, tokenizer)
    with pytest.raises(ConfigError, match=r"^rollout_engine: merged .* 4-bit base computes in torch.bfloat16"):
        engine.build("merged", bf16_base, eos_ids, pad)
    assert isinstance(engine.build("auto", bf16_base, eos_ids, pad), engine.TransformersEngine)
