"""PPO on one shared base, on the tiny model: what moves, what must not, outputs, resume, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ppo_args, tensorboard_scalars, torchrun
from peft import PeftModel
from safetensors.torch import load_file
from trl.trainer.utils import selective_log_softmax

from rlhf import data, models, runs
from rlhf.config import parse
from rlhf.policy import packing
from rlhf.policy.roles import POLICY, REWARD, VALUE, position_ids
from rlhf.policy.sampler import Samples
from rlhf.ppo import losses
from rlhf.results import PPOResult
from rlhf.stages import ppo
from rlhf.stages.reward import score_sequences
from rlhf_core.errors import ConfigError


def _build(out: Path, sft_run: Path, reward_run: Path, *overrides: str):
    return ppo.build(*parse(ppo.CONFIG_TYPES, ppo_args(out, sft_run, reward_run, *overrides), prog="t", description=""))


@pytest.fixture(scope="module")
def trainer(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return _build(tmp_path_factory.mktemp("ppo"), tiny_sft_run, tiny_reward_run)


def _role_of(name: str) -> str | None:
    for role in (POLICY, VALUE, REWARD):
        if f".{role}." in name:
            return role
    return None


@pytest.mark.parametrize("sequence", [[VALUE, POLICY], [REWARD, POLICY], [VALUE, REWARD, VALUE]])
def test_requires_grad_is_right_after_every_adapter_switch(trainer, sequence: list[str]) -> None:
    roles = trainer.roles
    for role in sequence:
        roles.use(role)
        for name, param in roles.peft.named_parameters():
            expected = _role_of(name) in (POLICY, VALUE)
            assert param.requires_grad == expected, f"after use({role}): {name}"
        assert roles.value_head.weight.requires_grad and not roles.reward_heads[0].weight.requires_grad
    with roles.reference():  # nothing trains through the reference
        assert not any(p.requires_grad for n, p in roles.peft.named_parameters() if _role_of(n))
    # and both trainable roles are trainable again afterwards (PEFT alone would leave the critic frozen)
    assert all(p.requires_grad == (_role_of(n) in (POLICY, VALUE)) for n, p in roles.peft.named_parameters())
    roles.use(POLICY)


def test_shared_base_scores_exactly_like_the_reward_model(trainer, tiny_reward_run: Path) -> None:
    rows = data.load_split("builtin:tiny/pairs", "test")[0][:12]
    prompts, texts = [r["prompt"] for r in rows], [r["chosen"][0]["content"] for r in rows]
    shared = trainer.sampler.reward_scores(prompts, texts)
    model, tokenizer = models.load_reward_model(tiny_reward_run)
    alone = score_sequences(
        model, [data.scoring_ids(tokenizer, p, t) for p, t in zip(prompts, texts, strict=True)], tokenizer.pad_token_id
    )
    assert shared.tolist() == pytest.approx(alone, abs=1e-4)


def test_scoring_is_deterministic_mid_training_with_a_reward_model_trained_with_dropout(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """Reward, value and log-prob passes never apply dropout, whatever the adapters' lora_dropout.

    The trainer leaves the model in train mode after an update; the reward and value LoRAs come from
    a reward run with lora_dropout > 0 (as every real recipe has). Scores must still equal the
    standalone reward model's, call after call.
    """
    assert runs.read_config(tiny_reward_run)["lora_dropout"] > 0
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--steps", "1")
    trainer.train()  # one iteration: rollout, scoring, update (leaves the model in train mode)
    assert trainer.roles.peft.training
    rows = data.load_split("builtin:tiny/pairs", "test")[0][:12]
    prompts, texts = [r["prompt"] for r in rows], [r["chosen"][0]["content"] for r in rows]
    model, tokenizer = models.load_reward_model(tiny_reward_run)
    alone = score_sequences(
        model, [data.scoring_ids(tokenizer, p, t) for p, t in zip(prompts, texts, strict=True)], tokenizer.pad_token_id
    )
    torch.manual_seed(3)
    rollout = trainer.sampler.generate(prompts)
    first = (
        trainer.sampler.reward_scores(prompts, texts),
        trainer.sampler.values(rollout),
        trainer.sampler.logprobs(rollout),
    )
    for _ in range(3):
        assert trainer.sampler.reward_scores(prompts, texts).tolist() == pytest.approx(alone, abs=1e-4)
        again = (
            trainer.sampler.reward_scores(prompts, texts),
            trainer.sampler.values(rollout),
            trainer.sampler.logprobs(rollout),
        )
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert trainer.roles.peft.training  # scoring restores the mode it found


def test_the_critic_starts_on_the_scale_of_its_returns(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """A value head copied from the reward model predicts raw scores; returns are normalised scores."""
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run)
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "train")[0][:32]]
    torch.manual_seed(0)
    trajectory = trainer.sampler.score(trainer.sampler.generate(prompts))
    raw = trajectory.values
    targets = trainer.advantages(trajectory)  # the first iteration maps the head onto the returns' scale
    mask = trajectory.samples.mask
    mean = lambda x: float(losses.masked_mean(x, mask))  # noqa: E731
    spread = float(losses.masked_moments(targets.returns, mask)[1].sqrt())
    assert abs(mean(targets.values) - mean(targets.returns)) < 0.1 * spread
    assert float(losses.masked_moments(targets.values, mask)[1].sqrt()) <= 1.05 * spread
    explained = losses.explained_variance(targets.values, targets.returns, mask)
    assert explained >= max(0.0, losses.explained_variance(raw, targets.returns, mask)), explained
    # the head itself changed, so the next forward pass predicts on the new scale
    assert torch.allclose(trainer.sampler.values(trajectory.samples), targets.values, atol=1e-4)


def test_early_stopping_checks_before_the_step(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    """A minibatch whose approximate KL is over the limit is not applied (the approx KL is never below 0)."""
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--max_approx_kl", "-1")
    before = [p.detach().clone() for p in trainer.roles.trainable_parameters(POLICY)]
    metrics = trainer.train_step()
    assert metrics["policy/early_stopped"] == 1.0 and metrics["policy/optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.roles.trainable_parameters(POLICY), strict=True))


def test_policy_starts_as_the_reference(trainer) -> None:
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:8]]
    torch.manual_seed(0)
    rollout = trainer.sampler.generate(prompts)
    assert torch.allclose(
        trainer.sampler.logprobs(rollout), trainer.sampler.logprobs(rollout, reference=True), atol=1e-5
    )
    assert trainer.sampler.kl_to_reference(rollout).abs().max() < 1e-5


def test_trimming_padding_changes_no_measurement_and_no_gradient(trainer) -> None:
    """Minibatches and scoring batches drop the columns that are padding in all their rows.

    Compared directly with the same rows at the rollout's full width: log-probs, values and the
    gradient of the policy's log-likelihood agree, and a batch of short answers is narrower.
    """
    sampler = trainer.sampler
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:12]]
    torch.manual_seed(0)
    samples = sampler.generate(prompts)
    lengths = samples.mask.sum(1)
    assert lengths.min() < lengths.max(), "the rollout needs answers of different lengths"

    def untrimmed(rows: torch.Tensor) -> Samples:
        picked = rows.tolist()
        return Samples(
            [samples.prompts[i] for i in picked], samples.query[rows], samples.query_mask[rows],
            samples.response[rows], samples.mask[rows], [samples.texts[i] for i in picked], samples.ended[rows],
        )  # fmt: skip

    def full_width_logprobs() -> torch.Tensor:
        with sampler.scoring():
            return selective_log_softmax(sampler.response_logits(samples), samples.response) * samples.mask

    size = sampler.forward_batch_size
    sampler.forward_batch_size = 5  # several length-grouped, trimmed batches, put back in order
    try:
        assert torch.allclose(sampler.logprobs(samples), full_width_logprobs(), atol=1e-5)
        with sampler.scoring():
            trainer.roles.use(VALUE)
            full_values = trainer.roles.values(sampler.response_hidden(samples)) * samples.mask
            trainer.roles.use(POLICY)
        assert torch.allclose(sampler.values(samples), full_values, atol=1e-5)
    finally:
        sampler.forward_batch_size = size

    short = torch.argsort(lengths)[:4]
    trimmed = samples.select(short)
    assert trimmed.response.shape[1] == int(lengths[short].max()) < samples.response.shape[1]
    assert trimmed.texts == [samples.texts[i] for i in short.tolist()]

    def gradient(batch: Samples) -> list[torch.Tensor]:
        trainer.roles.peft.zero_grad(set_to_none=True)
        logprobs = selective_log_softmax(sampler.response_logits(batch), batch.response)
        (logprobs * batch.mask).sum().backward()
        return [p.grad.clone() for p in trainer.roles.trainable_parameters(POLICY)]

    trainer.roles.peft.train()
    try:
        for a, b in zip(gradient(trimmed), gradient(untrimmed(short)), strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    finally:
        trainer.roles.peft.zero_grad(set_to_none=True)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_groups_measure_what_padded_rows_measure(
    trainer, attention: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers to one prompt packed into one row (prompt once, block mask) = one padded row per answer.

    On the 4-bit tiny base, with runs of 3, 1 and 2 answers to prompts of different lengths and
    answers of different lengths: the policy's and the reference's log-probs, entropies, the
    critic's values, and the gradient of the policy's log-likelihood all agree with the padded
    layout; the packed layout is what was measured (fewer tokens went through the model).
    """
    sampler, roles = trainer.sampler, trainer.roles
    assert sampler.packs_groups
    base = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:3]]
    prompts = [base[0]] * 3 + [base[1]] + [base[2]] * 2
    torch.manual_seed(1)
    samples = sampler.generate(prompts)
    assert packing.prompt_runs(samples.query, samples.query_mask) == [3, 1, 2]
    assert len(set(samples.mask.sum(1).tolist())) > 2, "the answers need different lengths"
    assert packing.packing_saves([3, 1, 2], samples.query_mask, samples.mask, sampler.packing_weight)
    monkeypatch.setattr(roles.causal_lm.config, "_attn_implementation", attention)

    def measure() -> dict[str, torch.Tensor]:
        with sampler.scoring():
            logprobs, entropy = sampler.response_logprobs(samples, with_entropy=True)
        roles.peft.train()
        roles.peft.zero_grad(set_to_none=True)
        (sampler.response_logprobs(samples)[0] * samples.mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in roles.trainable_parameters(POLICY)])
        roles.peft.zero_grad(set_to_none=True)
        assert entropy is not None
        return {
            "logprobs": logprobs * samples.mask,
            "entropy": entropy * samples.mask,
            "reference": sampler.logprobs(samples, reference=True),
            "values": sampler.values(samples),
            "gradient": grads,
        }

    seen: list[int] = []
    hidden_states = roles.hidden_states

    def counting(ids: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        seen.append(ids.numel())
        return hidden_states(ids, *args)

    monkeypatch.setattr(roles, "hidden_states", counting)
    packed = measure()
    packed_tokens = list(seen)
    monkeypatch.setattr(sampler, "packing_weight", None)
    seen.clear()
    padded = measure()
    assert max(packed_tokens) < min(seen) == samples.query.numel() + samples.response.numel()
    for name, value in packed.items():
        assert torch.allclose(value, padded[name], atol=1e-5, rtol=1e-4), name
    assert packed["gradient"].abs().sum() > 0


def test_a_head_that_is_not_a_plain_linear_layer_gives_the_same_logprobs(
    trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head the chunked projection cannot take (a LoRA on ``lm_head``) goes through the full logits, same results."""
    sampler = trainer.sampler
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:6]]
    torch.manual_seed(0)
    samples = sampler.generate(prompts)
    with sampler.scoring():
        chunked = sampler.response_logprobs(samples, with_entropy=True)
        head = trainer.roles.causal_lm.get_output_embeddings()

        class Wrapped(torch.nn.Module):  # what PEFT puts where a LoRA targets lm_head: not an nn.Linear
            def forward(self, hidden: torch.Tensor) -> torch.Tensor:
                return head(hidden)

        monkeypatch.setattr(trainer.roles.causal_lm, "get_output_embeddings", Wrapped)
        full = sampler.response_logprobs(samples, with_entropy=True)
    for a, b in zip(chunked, full, strict=True):
        assert torch.allclose(a * samples.mask, b * samples.mask, atol=1e-5)


def test_missing_eos_is_penalised(trainer) -> None:
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:4]]
    torch.manual_seed(0)
    trajectory = trainer.sampler.score(trainer.sampler.generate(prompts))
    ended = replace(trajectory.samples, ended=torch.tensor([True, False, True, False]))
    trainer.config.normalize_reward = False
    try:
        shaped = trainer.advantages(replace(trajectory, samples=ended)).scores
    finally:
        trainer.config.normalize_reward = True
    penalty = trainer.config.missing_eos_penalty
    assert (trajectory.scores - shaped).tolist() == pytest.approx([0.0, penalty, 0.0, penalty], abs=1e-6)


def test_ppo_trains_policy_and_value_only(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run)
    roles = trainer.roles
    before = {n: p.detach().clone() for n, p in roles.named_parameters()}
    prompts = [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:8]]
    torch.manual_seed(1)
    fixed = trainer.sampler.generate(prompts)
    reference_before = trainer.sampler.logprobs(fixed, reference=True)
    scores_before = trainer.sampler.reward_scores(fixed.prompts, fixed.texts)

    history = trainer.train()

    after = dict(roles.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {n for n in before if _role_of(n) in (POLICY, VALUE) or n.startswith("value_head")}
    assert changed == trainable  # every policy/value weight moved; the base, reward LoRA and heads did not
    assert torch.equal(trainer.sampler.logprobs(fixed, reference=True), reference_before)
    assert torch.equal(trainer.sampler.reward_scores(fixed.prompts, fixed.texts), scores_before)
    # the evaluation's exact KL is >= 0 per answer (the sampled log-ratio can go negative), and > 0 once trained
    assert (trainer.sampler.kl_to_reference(fixed) > 0).all()
    assert len(history) == 3
    # the adapter as saved, loaded by plain PEFT on the base quantized as in training, is the trained policy
    trainer.save_adapter(POLICY, tmp_path / "saved")
    args = ppo_args(tmp_path, tiny_sft_run, tiny_reward_run)
    model_args, *_ = parse(ppo.CONFIG_TYPES, args, prog="t", description="")
    models.resolve_dtypes(model_args, trainer.config)
    base = models.load_causal_lm(model_args, trainer.tokenizer)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "saved")).eval()
    ids, mask = fixed.sequences
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    width = fixed.query.shape[1]
    logits = logits[:, width - 1 : -1].float() / trainer.config.temperature
    plain = selective_log_softmax(logits, fixed.response) * fixed.mask
    assert (plain - trainer.sampler.logprobs(fixed)).abs().max() < 1e-4
    assert (plain - reference_before).abs().max() > 1e-2  # and it is not the reference: training moved it
    for key in (
        "objective/score",
        "objective/kl",
        "policy/entropy",
        "policy/clipfrac",
        "policy/approx_kl",
        "loss/value_loss",
        "value/explained_variance",
        "response/length",
        "response/eos_rate",
        "time/generate",
        "time/score",
        "time/update",
        "throughput/tokens_per_second",
        "gold/score",
    ):
        assert key in history[-1], key


def test_ppo_stage_writes_a_plain_peft_policy_and_the_comparison(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import PartialState

    # as in a fresh `rlhf ppo` process, where no earlier stage has set up the state accelerate's trackers need
    monkeypatch.setattr(PartialState, "_shared_state", {})
    ppo.main(ppo_args(tmp_path, tiny_sft_run, tiny_reward_run, "--report_to", "tensorboard", "--logging_steps", "1"))
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "value" / "value_head.safetensors").is_file()
    # the run's adapter is the final checkpoint's policy (what training ended with; loading it: test above)
    final = load_file(str(tmp_path / "adapter_model.safetensors"))
    last = load_file(str(tmp_path / "checkpoint-3" / POLICY / "adapter_model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(tensor, last[k]) for k, tensor in final.items())
    # TensorBoard holds what metrics.jsonl holds, step by step
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert tensorboard_scalars(tmp_path / "runs", "objective/score") == [
        (m["step"], pytest.approx(m["objective/score"], rel=1e-6)) for m in logged
    ]
    evaluation = PPOResult.read(tmp_path).eval
    assert evaluation is not None and evaluation.prompts == 16
    assert evaluation.sft.gold is not None and evaluation.ppo.gold is not None  # the task's gold judge scored both
    assert evaluation.kl_ppo_to_sft > 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / ppo.SAMPLES_FILE).read_text().splitlines()) == 32
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))


def test_ppo_refuses_a_reward_model_of_another_base(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the shared base must be the one the reward LoRA was trained on"):
        _build(tmp_path, tiny_sft_run, tiny_reward_run, "--model_name_or_path", "builtin:tiny")
    with pytest.raises(ConfigError, match="quantization: '4bit', PPO loads the base with 'none'"):
        _build(tmp_path, tiny_sft_run, tiny_reward_run, "--quantization", "none")
    with pytest.raises(ConfigError, match="bnb_4bit_quant_type: 'nf4', PPO loads the base with 'fp4'"):
        _build(tmp_path, tiny_sft_run, tiny_reward_run, "--bnb_4bit_quant_type", "fp4")
    with pytest.raises(ConfigError, match="use_bnb_nested_quant: True"):
        _build(tmp_path, tiny_sft_run, tiny_reward_run, "--use_bnb_nested_quant", "false")
    with pytest.raises(ConfigError, match=r"reward_model_path: .*nothing: no such folder"):
        _build(tmp_path, tiny_sft_run, tmp_path / "nothing")


def _ppo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf", "ppo", *args]


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm", [[], ["--advantage_estimator", "grpo", "--kl_penalty", "loss"]], ids=["gae", "grpo"]
)
def test_resumed_run_ends_like_an_uninterrupted_one(
    algorithm: list[str], tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    common = ["--steps", "6", "--save_steps", "2", "--lr_scheduler_type", "linear", "--adaptive_kl_target", "0.5"]
    common += algorithm
    env = dict(os.environ)  # one thread (conftest): two threads per process oversubscribe the xdist workers
    straight = tmp_path / "straight"
    subprocess.run(
        _ppo_command(*ppo_args(straight, tiny_sft_run, tiny_reward_run), *common),
        check=True,
        env=env,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _ppo_command(*ppo_args(killed, tiny_sft_run, tiny_reward_run), *common),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoint-2").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "checkpoint-2").is_dir() and not (killed / "metrics.json").exists()  # killed mid-run
    subprocess.run(
        _ppo_command(*ppo_args(killed, tiny_sft_run, tiny_reward_run), *common, "--resume"),
        check=True,
        env=env,
        capture_output=True,
    )

    lines = lambda p: [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = lines(straight), lines(killed)
    assert [h["step"] for h in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key in (
            "objective/score",
            "objective/kl",
            "objective/kl_coef",
            "loss/value_loss",
            "loss/policy_loss",
            "policy/approx_kl",
            "gold/score",
        ):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), (x["step"], key)
        assert ("loss/value_loss" in x) == (not algorithm)
    ea, eb = PPOResult.read(straight).eval, PPOResult.read(killed).eval
    assert ea is not None and eb is not None
    assert ea.ppo.gold == pytest.approx(eb.ppo.gold, abs=1e-6)
    assert ea.kl_ppo_to_sft == pytest.approx(eb.kl_ppo_to_sft, rel=1e-4)


@pytest.mark.slow
def test_ppo_under_torchrun_with_two_processes(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    overrides = ["--steps", "2", "--save_steps", "2", "--rollout_batch_size", "8", "--report_to", "tensorboard"]
    result = torchrun(29533, "ppo", *ppo_args(tmp_path, tiny_sft_run, tiny_reward_run, *overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    sums = [torch.load(checkpoint / f"rng_state_{r}.pth", weights_only=False)["trainable_checksum"] for r in (0, 1)]
    assert sums[0] == pytest.approx(sums[1], rel=1e-9)  # gradients averaged: both ranks hold the same weights
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[-1]["throughput/episodes_per_second"] > 0
    # the first process logs to the trackers, the other does not (a fresh process: no state accelerate's
    # trackers need has been set up by an earlier stage)
    assert len(list((tmp_path / "runs").glob("events.out.tfevents.*"))) == 1
    assert tensorboard_scalars(tmp_path / "runs", "objective/score") == [
        (h["step"], pytest.approx(h["objective/score"], rel=1e-6)) for h in history
    ]
