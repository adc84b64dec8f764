"""The RL trainer's modes (rlhf/ppo/modes.py) on hand-made trajectories: which is chosen, and what each does."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rlhf.policy.sampler import Samples, Trajectory
from rlhf.ppo import losses, modes
from rlhf.ppo.config import PPOConfig


def _trajectory(logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None) -> Trajectory:
    """Two answers of 3 and 2 tokens (the second padded), no model needed."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    samples = Samples(
        prompts=["a", "b"],
        query=torch.ones(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1, dtype=torch.long),
        response=torch.ones(2, 3, dtype=torch.long),
        mask=mask,
        texts=["x", "y"],
        ended=torch.tensor([True, False]),
    )
    scores = torch.tensor([1.0, -1.0])
    return Trajectory(samples, logprobs, ref_logprobs, None, scores, {"model": scores})


LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, 0.0]])
REF = torch.tensor([[-1.2, -1.0, -0.5], [-1.0, -0.4, 0.0]])


def _config(**options: Any) -> PPOConfig:
    return PPOConfig(output_dir="unused", rollout_batch_size=8, mini_batch_size=8, **options)


@pytest.mark.parametrize(
    ("options", "placement", "reference"),
    [
        ({"kl_coef": 0.0}, modes.NoKL, False),
        ({"kl_coef": 0.0, "kl_penalty": "loss"}, modes.NoKL, False),
        ({"kl_coef": 0.1}, modes.KLInRewards, True),
        ({"kl_coef": 0.1, "kl_penalty": "loss"}, modes.KLInLoss, True),
    ],
)
def test_the_kl_placement_follows_kl_coef_and_kl_penalty(
    options: dict[str, Any], placement: type, reference: bool
) -> None:
    config = _config(**options)
    chosen = modes.kl_placement(config, losses.KLController(config.kl_coef))
    assert type(chosen) is placement and chosen.uses_reference == reference
    # only a KL in the rewards has to be known before the update (so only it needs a scoring pass of the policy)
    assert chosen.needs_logprobs_before_update == (placement is modes.KLInRewards)


def test_a_kl_in_the_rewards_is_measured_before_the_update_and_steered() -> None:
    controller = losses.KLController(0.1, target=1.0, horizon=10.0)
    placement = modes.KLInRewards(controller, "k1")
    trajectory = _trajectory(LOGPROBS, REF)
    kl = placement.estimate(trajectory)
    assert torch.equal(kl, (LOGPROBS - REF) * trajectory.samples.mask)
    assert placement.reward_coef() == 0.1
    per_token = torch.ones(2, 3)
    assert placement.add_to_loss(per_token, LOGPROBS, trajectory, {"kl_loss": []}) is per_token
    metrics = placement.metrics(kl.sum(1), trajectory.scores, lambda t: float(t.float().mean()))
    assert metrics["objective/kl"] == pytest.approx(float(kl.sum(1).mean()))
    assert metrics["objective/rlhf_reward"] == pytest.approx(float((trajectory.scores - 0.1 * kl.sum(1)).mean()))
    placement.adapt({"objective/kl": 2.0}, episodes=5)  # KL over the target: the coefficient grows
    assert controller.coef == pytest.approx(0.1 * (1 + 0.2 * 5 / 10))
    with pytest.raises(RuntimeError, match="before the update"):
        placement.estimate(_trajectory(None, REF))


def test_a_kl_in_the_loss_adds_kl_coef_times_k3_and_stays_out_of_the_rewards() -> None:
    placement = modes.KLInLoss(losses.KLController(0.5), "k3")
    trajectory = _trajectory(LOGPROBS, REF)
    assert placement.reward_coef() == 0.0
    stats: dict[str, list[float]] = {"kl_loss": []}
    per_token = torch.ones(2, 3)
    k3 = losses.kl_estimate(LOGPROBS, REF, "k3")
    assert torch.allclose(placement.add_to_loss(per_token, LOGPROBS, trajectory, stats), per_token + 0.5 * k3)
    assert stats["kl_loss"] == [pytest.approx(float(losses.masked_mean(k3, trajectory.samples.mask)))]


def test_a_kl_measured_by_the_update_replaces_the_zeros_the_advantages_saw() -> None:
    placement = modes.KLInLoss(losses.KLController(0.5), "k3")
    unmeasured = _trajectory(None, REF)  # one optimizer step per rollout: no scoring pass of the policy
    zeros = placement.estimate(unmeasured)
    assert not zeros.any()
    targets = modes.Targets(zeros, zeros, zeros, unmeasured.scores)
    after = placement.measured_by_update(targets, unmeasured, LOGPROBS)
    assert torch.equal(after.kl, losses.kl_estimate(LOGPROBS, REF, "k3") * unmeasured.samples.mask)
    scored = _trajectory(LOGPROBS, REF)  # measured before the update: kept as it was
    assert placement.measured_by_update(targets, scored, LOGPROBS * 2) is targets


def test_without_a_kl_nothing_is_measured_added_or_logged() -> None:
    placement = modes.NoKL()
    trajectory = _trajectory(LOGPROBS, None)
    assert not placement.estimate(trajectory).any() and placement.reward_coef() == 0.0
    per_token = torch.ones(2, 3)
    assert placement.add_to_loss(per_token, LOGPROBS, trajectory, {"kl_loss": []}) is per_token
    assert placement.metrics(torch.zeros(2), trajectory.scores, lambda t: 0.0) == {}


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_train_no_critic(name: str) -> None:
    config = _config(advantage_estimator=name, num_generations=2)
    estimator = modes.estimator(config, SimpleNamespace(has_critic=False), sampler=None)  # type: ignore[arg-type]
    assert estimator.param_groups() == []
    trajectory = _trajectory(LOGPROBS, REF)
    mask = trajectory.samples.mask
    kl = losses.kl_estimate(LOGPROBS, REF) * mask
    targets = estimator.targets(trajectory.scores, kl, 0.1, trajectory, first=True)
    if name == "reinforce_pp":
        rewards = losses.token_rewards(trajectory.scores, kl, mask, 0.1)
        assert torch.allclose(targets.advantages, losses.whiten(losses.returns_to_go(rewards, mask), mask))
    else:
        baseline = {"grpo": losses.group_relative, "rloo": losses.leave_one_out}[name]
        rewards = losses.token_rewards(baseline(trajectory.scores, 2), kl, mask, 0.1)
        assert torch.allclose(targets.advantages, losses.returns_to_go(rewards, mask))
    assert torch.equal(targets.rewards, rewards) and targets.values is None and targets.returns is None
    assert estimator.metrics(targets, mask) == {}  # no explained variance without a critic


def test_gae_needs_a_critic_and_the_critic_free_estimators_refuse_one() -> None:
    with pytest.raises(ValueError, match="gae needs a critic"):
        modes.estimator(_config(), SimpleNamespace(has_critic=False), sampler=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="critic-free ones hold none"):
        modes.estimator(
            _config(advantage_estimator="rloo"),
            SimpleNamespace(has_critic=True),  # type: ignore[arg-type]
            sampler=None,  # type: ignore[arg-type]
        )
