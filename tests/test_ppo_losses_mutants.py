"""PPO's pure functions at the edges the mutation run (scripts/mutation.py) found unguarded.

Each test pins a value worked out by hand where a plausible slip in ``rlhf/ppo/losses.py`` would
change it: one real token, two, a padded position, non-zero old log-probs, a constant batch, a
lower clip bound, the statistics that travel across ranks and into checkpoints.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlhf.ppo import losses
from rlhf.ppo.config import PPOConfig


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_moments_of_one_and_of_two_tokens_and_their_dtype() -> None:
    # one real token: its value is the mean, the variance 0 (no division by count - 1 = 0)
    mean, var = losses.masked_moments(t([5.0, 9.0]), t([1, 0]))
    assert (mean.item(), var.item()) == (5.0, 0.0)
    # two: mean 2, unbiased variance ((1-2)^2 + (3-2)^2) / (2 - 1) = 2
    mean, var = losses.masked_moments(t([1.0, 3.0]), t([1, 1]))
    assert (mean.item(), var.item()) == (pytest.approx(2.0), pytest.approx(2.0))
    # summed in float64 for accuracy, returned in the input's dtype (advantages stay fp32)
    assert mean.dtype == var.dtype == torch.float32
    assert losses.whiten(t([1.0, 3.0]), t([1, 1])).dtype == torch.float32


def test_whiten_uses_the_statistics_of_every_rank() -> None:
    # two identical ranks: mean 2, unbiased variance over 6 tokens 4/5 (one rank alone: 1)
    white = losses.whiten(t([1.0, 2.0, 3.0]), t([1, 1, 1]), reduce=lambda s: s * 2)
    assert white.tolist()[0] == pytest.approx([-1 / math.sqrt(0.8), 0.0, 1 / math.sqrt(0.8)])


def test_whiten_of_a_constant_batch_is_zero_not_nan() -> None:
    assert losses.whiten(t([2.0, 2.0, 2.0]), t([1, 1, 1])).tolist() == [[0.0, 0.0, 0.0]]


def test_whiten_without_shifting_the_mean_keeps_it() -> None:
    # 1, 3, 5: mean 3, unbiased std 2 -> (x - 3) / 2 + 3 = 2, 3, 4; padding stays 0
    out = losses.whiten(t([1.0, 3.0, 5.0, 7.0]), t([1, 1, 1, 0]), shift_mean=False)
    assert out.tolist()[0] == pytest.approx([2.0, 3.0, 4.0, 0.0])


def test_gae_on_one_token_responses() -> None:
    # one position: A = r - V, return = r
    advantages, returns = losses.gae(t([2.0], [1.0]), t([0.5], [3.0]), t([1], [1]), gamma=1.0, lam=0.95)
    assert advantages.tolist() == [[1.5], [-2.0]] and returns.tolist() == [[2.0], [1.0]]


def test_the_ratio_is_new_over_old_probability() -> None:
    # old p .5, new p .75: ratio 1.5 (not .375, the product); advantage +1 clipped at 1.2
    old = torch.full((1, 1), math.log(0.5))
    new = torch.full((1, 1), math.log(0.75))
    per_token, stats = losses.policy_loss(new, old, t([1.0]), t([1]), clip=0.2)
    assert per_token.item() == pytest.approx(-1.2)
    assert stats["approx_kl"].item() == pytest.approx(0.5 - math.log(1.5))


def test_no_clip_inside_the_trust_region_and_no_loss_on_padding() -> None:
    # ratio 1 and 1.1 are inside [.8, 1.2]: the clip is not active there (clipped == unclipped)
    new = torch.log(t([1.0, 1.1, 1.0]))
    per_token, stats = losses.policy_loss(new, torch.zeros(1, 3), t([1.0, -2.0, 5.0]), t([1, 1, 0]), clip=0.2)
    assert per_token.tolist() == [pytest.approx([-1.0, 2.2, 0.0])]  # the padded token's loss is 0, not inf
    assert stats["clipfrac"].item() == 0.0


def test_dapo_aggregation_of_a_single_token() -> None:
    assert losses.aggregate(t([3.0, 7.0]), t([1, 0]), "dapo", 1, 1, 2).item() == 3.0


def test_unknown_loss_type_error_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown loss_type 'mean' \(use one of dapo, grpo, dr_grpo\)"):
        losses.aggregate(t([1.0]), t([1]), "mean", 1, 1, 1)


def test_group_statistics_for_groups_of_one_and_two() -> None:
    # pairs: 1, 3 -> leave-one-out baselines 3 and 1 -> -2, 2; spread: std sqrt(2), no flat group
    assert losses.leave_one_out(torch.tensor([1.0, 3.0]), 2).tolist() == [-2.0, 2.0]
    assert losses.group_spread(torch.tensor([1.0, 3.0]), 2) == pytest.approx((math.sqrt(2), 0.0))
    # one answer per prompt: no spread (0, not the NaN of an unbiased std of one value), every group flat
    assert losses.group_spread(torch.tensor([1.0, 3.0]), 1) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"^a leave-one-out baseline needs at least 2 answers per prompt$"):
        losses.leave_one_out(torch.tensor([1.0, 3.0]), 1)


def test_value_clipping_holds_a_value_that_fell_below_the_old_one() -> None:
    """The lower bound of the value clip, with a non-zero old value: V=0, old 1, R=0.

    Unclipped error 0; clipped V = 1 + clip(0 - 1, -.2, .2) = .8, error .64: the loss is .5 * .64.
    """
    loss, stats = losses.value_loss(t([0.0]), t([1.0]), t([0.0]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.64)
    assert stats["value_clipfrac"].item() == 1.0


def test_affine_fit_on_one_token() -> None:
    # no spread in x: slope 0, intercept the one target
    assert losses.affine_fit(t([2.0, 5.0]), t([7.0, 1.0]), t([1, 0])) == (0.0, 7.0)


def test_explained_variance_of_constant_and_of_low_variance_returns() -> None:
    # constant returns: undefined (NaN), whatever the values
    assert math.isnan(losses.explained_variance(t([0.0, 1.0, 2.0]), t([1.0, 1.0, 1.0]), t([1, 1, 1])))
    # returns 0, 1 (unbiased variance .5, below 1): values 0, 0 explain none of it, values = returns all
    assert losses.explained_variance(t([0.0, 0.0]), t([0.0, 1.0]), t([1, 1])) == pytest.approx(0.0)
    assert losses.explained_variance(t([0.0, 1.0]), t([0.0, 1.0]), t([1, 1])) == pytest.approx(1.0)


def test_running_moments_take_a_single_value_and_normalise_by_the_std() -> None:
    moments = losses.RunningMoments()
    moments.update(torch.tensor([4.0]))  # one value: the mean moves to it (count 1e-4 before)
    assert moments.mean == pytest.approx(4.0, abs=1e-3)
    moments = losses.RunningMoments(mean=3.0, var=4.0, count=10.0)  # std 2
    assert moments.normalize(torch.tensor([5.0, 2.0])).tolist() == pytest.approx([1.0, -0.5])
    assert moments.normalize(torch.tensor([-100.0, 100.0]), clip=5.0).tolist() == [-5.0, 5.0]
    small = losses.RunningMoments(mean=0.0, var=0.25, count=10.0)  # std .5 < 1
    assert small.normalize(torch.tensor([1.0])).item() == pytest.approx(2.0)


def test_kl_controller_state_round_trips_under_its_names() -> None:
    controller = losses.KLController(coef=0.05, target=6.0, horizon=5_000.0)
    state = controller.state_dict()
    assert state == {"coef": 0.05, "target": 6.0, "horizon": 5_000.0}  # the keys checkpoints hold
    restored = losses.KLController(coef=1.0)
    restored.load_state_dict(state)
    assert dataclasses.astuple(restored) == (0.05, 6.0, 5_000.0)
    fixed = losses.KLController(coef=1.0, target=3.0)
    fixed.load_state_dict({"coef": 0.1, "target": None, "horizon": 10_000.0})
    assert dataclasses.astuple(fixed) == (0.1, None, 10_000.0)


def test_the_pure_functions_default_to_the_configs_defaults() -> None:
    """A caller that leaves a parameter out gets what an `rlhf ppo` run with default options uses."""
    config = PPOConfig()
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1])
    for left_out, given in zip(
        losses.gae(rewards, values, mask), losses.gae(rewards, values, mask, config.gamma, config.lam), strict=True
    ):
        assert torch.equal(left_out, given)
    new, old, advantages = torch.log(t([1.5, 0.5])), torch.zeros(1, 2), t([1.0, -1.0])  # both outside the clip
    assert torch.equal(
        losses.policy_loss(new, old, advantages, t([1, 1]))[0],
        losses.policy_loss(new, old, advantages, t([1, 1]), config.cliprange)[0],
    )
    assert losses.value_loss(t([1.0]), t([0.0]), t([1.0]), t([1]))[0].item() == pytest.approx(
        losses.value_loss(t([1.0]), t([0.0]), t([1.0]), t([1]), config.cliprange_value)[0].item()
    )
    scores = torch.tensor([1.0, 3.0, 5.0])  # std 2: scaled and unscaled differ
    assert torch.equal(losses.group_relative(scores, 3), losses.group_relative(scores, 3, config.scale_rewards))
    assert (config.gamma, config.lam, config.cliprange, config.cliprange_value) == (1.0, 0.95, 0.2, 0.2)


def test_kl_estimate_defaults_to_k1() -> None:
    """k1 is what a run with the KL in the rewards (the default ``kl_penalty``) resolves to."""
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert losses.kl_estimate(logp, ref).item() == pytest.approx(math.log(2))
    assert PPOConfig().kl_estimator == "k1"
