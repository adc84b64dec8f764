"""GRPO, RLOO and REINFORCE++ on the PPO trainer: no critic in memory, groups, KL placement, reward functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ppo_args

from rlhf import data
from rlhf.config import parse
from rlhf.policy import packing, rewards
from rlhf.policy.roles import POLICY, REWARD, VALUE
from rlhf.ppo import losses
from rlhf.results import PPOResult
from rlhf.stages import evaluate, ppo
from rlhf.tiny import task


def _args(out: Path, sft_run: Path, reward_run: Path | None, *overrides: str) -> list[str]:
    """The small tiny PPO recipe; ``reward_run=None``: no reward model (reward functions alone)."""
    args = ppo_args(out, sft_run, reward_run or out, *overrides)
    if reward_run is None:
        args[args.index("--reward_model_path") + 1] = ""
    return args


def _build(out: Path, sft_run: Path, reward_run: Path | None, *overrides: str):
    return ppo.build(*parse(ppo.CONFIG_TYPES, _args(out, sft_run, reward_run, *overrides), prog="t", description=""))


def _prompts(n: int) -> list:
    return [r["prompt"] for r in data.load_split("builtin:tiny/prompts", "test")[0][:n]]


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_runs_hold_no_critic_and_train_the_policy_alone(
    estimator: str, tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--advantage_estimator", estimator, "--steps", "1")
    roles = trainer.roles
    assert VALUE not in roles.peft.peft_config and roles.value_head is None and not roles.has_critic
    assert [g["name"] for g in trainer.optimizer.param_groups] == [POLICY]
    before = {n: p.detach().clone() for n, p in roles.named_parameters()}

    prompts = trainer._next_prompts()
    group = trainer.config.num_generations
    assert group == (4 if estimator != "reinforce_pp" else 1) and len(prompts) == 16
    assert all(prompts[i] == prompts[i - i % group] for i in range(16))  # each prompt `group` times in a row
    trainer.cursor, trainer.epoch = 0, 0
    metrics = trainer.train_step()

    after = dict(roles.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(f".{POLICY}." in n for n in changed)  # the policy LoRA moved, nothing else did
    assert "loss/value_loss" not in metrics and "value/explained_variance" not in metrics
    assert {"objective/score", "objective/kl", "policy/approx_kl", "reward/model", "gold/score"} <= set(metrics)
    assert ("reward/zero_std_groups" in metrics) == (group > 1)
    trainer.save_checkpoint()
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / POLICY).is_dir() and not (checkpoint / VALUE).exists()


def test_group_advantages_come_from_each_prompts_own_answers(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--advantage_estimator", "grpo", "--kl_coef", "0")
    torch.manual_seed(0)
    prompts = [p for p in _prompts(4) for _ in range(4)]
    trajectory = trainer.sampler.score(trainer.sampler.generate(prompts), reference=False)
    targets = trainer.advantages(trajectory)
    expected = losses.group_relative(targets.scores, 4)
    first = targets.advantages[:, 0]  # without a KL in the reward, every token carries its answer's advantage
    assert first.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert first.view(4, 4).sum(1).abs().max() < 1e-4  # zero mean within each group


def test_kl_coef_zero_never_runs_the_reference(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--advantage_estimator", "grpo", "--kl_coef", "0")

    def refuse() -> None:
        raise AssertionError("the reference ran")

    monkeypatch.setattr(trainer.roles, "reference", refuse)
    metrics = trainer.train_step()
    assert "objective/kl" not in metrics and metrics["policy/optimizer_steps"] > 0


def test_kl_as_a_loss_term_stays_out_of_the_rewards(tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path) -> None:
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, "--advantage_estimator", "grpo", "--kl_penalty", "loss")
    torch.manual_seed(0)
    trajectory = trainer.sampler.score(trainer.sampler.generate([p for p in _prompts(4) for _ in range(4)]))
    trajectory = type(trajectory)(**{**trajectory.__dict__, "ref_logprobs": trajectory.ref_logprobs - 0.5})
    targets = trainer.advantages(trajectory)
    assert targets.kl.abs().sum() > 0  # measured (k3) ...
    mask = trajectory.samples.mask
    baselined = losses.group_relative(targets.scores, 4)
    assert torch.allclose(targets.rewards, losses.token_rewards(baselined, targets.kl, mask, 0.0))  # ... not a reward
    metrics = trainer.train_step()
    assert metrics["policy/kl_loss"] >= 0 and "objective/kl" in metrics


def test_reward_functions_and_the_reward_model_are_weighted_and_logged_apart(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    trainer = _build(
        tmp_path,
        tiny_sft_run,
        tiny_reward_run,
        *("--advantage_estimator", "rloo", "--reward_funcs", "rlhf.tiny.task:gold_reward"),
        *("--reward_weights", "2.0", "--reward_model_weight", "0.5"),
    )
    torch.manual_seed(0)
    samples = trainer.sampler.generate([p for p in _prompts(2) for _ in range(4)])
    trajectory = trainer.sampler.score(samples)
    parts = trajectory.reward_parts
    assert set(parts) == {rewards.MODEL, "gold_reward"}
    assert parts["gold_reward"].tolist() == pytest.approx(
        [task.score(p, t) for p, t in zip(samples.prompts, samples.texts, strict=True)]
    )
    assert parts[rewards.MODEL].tolist() == pytest.approx(
        trainer.sampler.reward_scores(samples.prompts, samples.texts).tolist()
    )
    assert torch.allclose(trajectory.scores, 0.5 * parts[rewards.MODEL] + 2.0 * parts["gold_reward"])
    metrics = trainer.train_step()
    assert {"reward/model", "reward/gold_reward"} <= set(metrics)


def test_a_run_rewarded_by_functions_alone_loads_no_reward_model_and_says_the_judge_trained_it(
    tiny_sft_run: Path, tmp_path: Path
) -> None:
    overrides = ("--advantage_estimator", "grpo", "--reward_funcs", "rlhf.tiny.task:gold_reward", "--steps", "1")
    trainer = _build(tmp_path, tiny_sft_run, None, *overrides)
    assert REWARD not in trainer.roles.peft.peft_config and not trainer.roles.has_reward_model
    del trainer
    result = ppo.main(_args(tmp_path, tiny_sft_run, None, *overrides))
    assert result.reward_components == ["gold_reward"] and result.judge_is_reward
    assert result.advantage_estimator == "grpo"
    again = PPOResult.read(tmp_path)
    assert again.judge_is_reward and again.eval is not None and again.eval.sft.gold is not None
    assert not (tmp_path / VALUE).exists()
    evaluated = evaluate.run(evaluate.EvalConfig(run_dir=str(tmp_path), max_prompts=4, seeds=[0], disable_tqdm=True))
    assert evaluated.reward_model is None and evaluated.ppo.gold is not None  # no reward model to score pairs with


@pytest.mark.parametrize(("pack", "micro"), [(True, 8), (True, 2), (False, 8)])
def test_groups_are_packed_and_every_forward_keeps_a_groups_answers_together(
    pack: bool, micro: int, tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring batches and minibatches keep a prompt's answers together, so they go through the model packed.

    Groups of 4, minibatches of 8: micro-batches of 8 hold two whole groups, micro-batches of 2 half
    a group each (packed too). With ``pack_groups: false`` nothing is packed and rows are shuffled
    one by one, as before.
    """
    overrides = ("--advantage_estimator", "grpo", "--steps", "1", "--pack_groups", str(pack).lower())
    trainer = _build(tmp_path, tiny_sft_run, tiny_reward_run, *overrides, "--micro_batch_size", str(micro))
    assert trainer.sampler.packs_groups == pack
    runs_seen: list[list[int]] = []
    packed: list[int] = []
    pack_rows, response_hidden = packing.pack, trainer.sampler.response_hidden
    monkeypatch.setattr(packing, "pack", lambda *a, **k: packed.append(1) or pack_rows(*a, **k))

    def spy(batch):
        runs_seen.append(packing.prompt_runs(batch.query, batch.query_mask))
        return response_hidden(batch)

    monkeypatch.setattr(trainer.sampler, "response_hidden", spy)
    metrics = trainer.train_step()
    assert metrics["policy/optimizer_steps"] == 2 * trainer.config.ppo_epochs  # 16 answers, minibatches of 8
    update = runs_seen[-2 * trainer.config.ppo_epochs * (8 // micro) :]  # the update's forward passes
    if pack:
        assert all(run % min(4, micro) == 0 for runs in runs_seen for run in runs)
        assert all(runs == [micro] if micro < 4 else all(run % 4 == 0 for run in runs) for runs in update)
        assert len(packed) == len(runs_seen)
    else:
        assert not packed and any(run % 4 for runs in update for run in runs)


def test_one_step_per_rollout_measures_the_sampling_policy_in_the_update(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch, one minibatch, KL as a loss: no separate log-prob pass, and the same step and KL as with it.

    The update's forward pass runs before the policy moves, so it is the sampling policy's measurement
    (TRL's GRPO skips the pass the same way). Compared directly with a run that makes the pass.
    """
    overrides = ("--advantage_estimator", "grpo", "--kl_penalty", "loss", "--ppo_epochs", "1")
    overrides += ("--mini_batch_size", "16", "--micro_batch_size", "8", "--steps", "1")
    runs = {}
    for measured_in_update in (True, False):
        trainer = _build(tmp_path / str(measured_in_update), tiny_sft_run, tiny_reward_run, *overrides)
        assert trainer.measures_in_update
        policy_passes: list[bool] = []
        logprobs = trainer.sampler.logprobs

        def counting(samples, reference=False, logprobs=logprobs, seen=policy_passes):
            seen.append(not reference)
            return logprobs(samples, reference=reference)

        monkeypatch.setattr(trainer.sampler, "logprobs", counting)
        before = torch.cat([p.detach().clone().flatten() for p in trainer.roles.trainable_parameters(POLICY)])
        with monkeypatch.context() as patch:
            if not measured_in_update:
                patch.setattr(type(trainer), "measures_in_update", property(lambda self: False))
            torch.manual_seed(0)
            metrics = trainer.train_step()
        assert any(policy_passes) != measured_in_update  # the policy's scoring pass ran only when asked to
        weights = torch.cat([p.detach().flatten() for p in trainer.roles.trainable_parameters(POLICY)])
        assert not torch.equal(weights, before)  # the step moved the policy
        runs[measured_in_update] = (metrics, weights)
    (measured, after), (separate, separate_after) = runs[True], runs[False]
    assert measured["objective/kl"] == pytest.approx(separate["objective/kl"], abs=1e-5)
    assert measured["objective/kl"] > 0 and measured["policy/optimizer_steps"] == 1
    # Adam's first step is lr * g / (|g| + eps): a weight whose gradient is ~1e-8 turns the 1e-7 rounding
    # between the two log-prob passes into up to ~1% of a step (1.9e-6 seen); a wrong measurement moves
    # weights by a whole step (lr 3e-4)
    assert torch.allclose(after, separate_after, atol=1e-5)
    assert measured["policy/approx_kl"] == 0.0 and abs(separate["policy/approx_kl"]) < 1e-5
