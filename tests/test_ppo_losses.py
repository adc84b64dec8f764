"""PPO's pure functions against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from trl.trainer.utils import selective_log_softmax

from rlhf.policy.logprobs import token_logprobs
from rlhf.policy.sampling import SamplingSettings
from rlhf.ppo import losses


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_by_hand() -> None:
    # rewards 0, 0, 1; values .5, .6, .7; gamma 1, lambda .95
    # t=2: delta = 1 - .7 = .3            A = .3
    # t=1: delta = .7 - .6 = .1           A = .1 + .95 * .3 = .385
    # t=0: delta = .6 - .5 = .1           A = .1 + .95 * .385 = .46575
    advantages, returns = losses.gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.95)
    assert advantages.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_stops_at_the_end_of_the_response() -> None:
    # the response ended at t=1: nothing after it counts, and V after the end is 0
    # t=1: delta = 1 + .9 * 0 - .6 = .4; t=0: delta = .9 * .6 - .5 = .04, A = .04 + .9 * .5 * .4 = .22
    advantages, _ = losses.gae(t([0, 1, 5]), t([0.5, 0.6, 9.0]), t([1, 1, 0]), gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.22, 0.4, 0.0])


def test_token_rewards_put_the_score_on_the_last_real_token() -> None:
    rewards = losses.token_rewards(
        torch.tensor([2.0, -1.0]), t([0.1, 0.2, 0.3], [0.4, 0.0, 0.0]), t([1, 1, 0], [1, 0, 0]), 0.5
    )
    assert rewards.tolist() == [pytest.approx([-0.05, 1.9, 0.0]), pytest.approx([-1.2, 0.0, 0.0])]


def test_kl_estimators() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert losses.kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 with r = q/p = 0.5: (r - 1) - log r = -0.5 + log 2
    assert losses.kl_estimate(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert losses.kl_estimate(ref, logp, "k3").item() >= 0  # k3 is never negative
    with pytest.raises(ValueError, match="unknown KL estimator"):
        losses.kl_estimate(logp, ref, "k2")


def test_clipped_policy_loss_by_hand() -> None:
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(1.5))  # ratio 1.5 on both tokens
    # advantage +1: min(1.5, 1.2) * 1 -> loss -1.2 (clipped); advantage -1: max(1.5, 1.2) -> loss 1.5 (not clipped)
    per_token, stats = losses.policy_loss(new, old, t([1.0, -1.0]), t([1, 1]), clip=0.2)
    assert per_token.tolist() == [pytest.approx([-1.2, 1.5])]
    assert losses.aggregate(per_token, t([1, 1]), "dapo", 1, 2, 2).item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(0.5 - math.log(1.5))


def test_the_ratio_is_clipped_below_too_with_a_negative_advantage() -> None:
    """PPO's lower bound: a token made less likely (ratio 0.5 < 1 - clip) with advantage -1 is held at 0.8.

    max(-A * 0.5, -A * clip(0.5, 0.8, 1.2)) = max(0.5, 0.8) = 0.8, with no gradient (the objective is
    flat there); without the lower bound the loss would be 0.5 and keep pushing the ratio down.
    """
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), math.log(0.5), requires_grad=True)
    per_token, stats = losses.policy_loss(new, old, t([-1.0, 1.0]), t([1, 1]), clip=0.2)
    # advantage -1 at ratio .5: clipped, 0.8; advantage +1 at ratio .5: min(.5, .8) -> loss -.5 (unclipped)
    assert per_token.tolist() == [pytest.approx([0.8, -0.5])]
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(per_token.sum(), new)
    assert grad.tolist() == [pytest.approx([0.0, -0.5])]  # d(-A * r)/d log r = -A * r on the unclipped token


def test_clipped_value_loss_by_hand() -> None:
    # V=2, old 1, R=1: clipped V=1.2, errors 1 vs .04 -> .5 * 1; V=.5, old 1, R=2: clipped .8, errors 2.25 vs 1.44
    loss, stats = losses.value_loss(t([2.0, 0.5]), t([1.0, 1.0]), t([1.0, 2.0]), t([1, 1]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 2.25) / 2)
    assert stats["value_clipfrac"].item() == pytest.approx(0.0)


def test_value_clipping_takes_the_larger_clipped_error() -> None:
    """The clipped error wins when the new value jumped onto the return: the critic may not move that far.

    V=1, old 0, R=1: unclipped error 0, clipped V=0.2 -> error .64 -> loss .5 * .64, and its gradient
    is zero (the clipped value does not depend on V); V=0, old 0, R=1: both errors 1 (not clipped).
    """
    values = t([1.0, 0.0]).requires_grad_(True)
    loss, stats = losses.value_loss(values, t([0.0, 0.0]), t([1.0, 1.0]), t([1, 1]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert stats["value_clipfrac"].item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(loss, values)
    assert grad.tolist() == [pytest.approx([0.0, -0.5])]  # d .5 * mean((V - R)^2) / dV = (V - R) / 2


def test_masked_statistics_ignore_padding_and_reduce_over_ranks() -> None:
    x, mask = t([1, 2, 3, 100]), t([1, 1, 1, 0])
    assert losses.masked_mean(x, mask).item() == pytest.approx(2.0)
    mean, var = losses.masked_moments(x, mask)
    assert (mean.item(), var.item()) == (pytest.approx(2.0), pytest.approx(1.0))
    white = losses.whiten(x, mask)
    assert white[0, 3].item() == 0.0
    assert losses.masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    # two identical ranks: same mean, and the variance counts 6 tokens instead of 3
    mean2, var2 = losses.masked_moments(x, mask, reduce=lambda s: s * 2)
    assert mean2.item() == pytest.approx(2.0) and var2.item() == pytest.approx(4 / 5)


def test_explained_variance() -> None:
    returns, mask = t([1, 2, 3, 4]), t([1, 1, 1, 1])
    assert losses.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert losses.explained_variance(torch.zeros_like(returns), returns, mask) == pytest.approx(0.0)


def test_adaptive_kl_controller_moves_towards_the_target() -> None:
    controller = losses.KLController(coef=0.1, target=6.0, horizon=10_000)
    controller.update(kl=12.0, n_episodes=64)  # error clipped to +0.2
    assert controller.coef == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000))
    controller.update(kl=3.0, n_episodes=64)  # error -0.5 clipped to -0.2
    assert controller.coef == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000) * (1 - 0.2 * 64 / 10_000))
    fixed = losses.KLController(coef=0.1)
    fixed.update(kl=100.0, n_episodes=64)
    assert fixed.coef == 0.1


def test_running_moments_match_the_whole_sample_and_round_trip() -> None:
    moments = losses.RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.mean == pytest.approx(3.0, abs=1e-3)
    assert moments.var == pytest.approx(2.0, abs=1e-2)  # population variance of 1..5
    assert moments.normalize(torch.tensor([3.0])).item() == pytest.approx(0.0, abs=1e-3)
    assert moments.normalize(torch.tensor([100.0]), clip=5.0).item() == 5.0
    restored = losses.RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.state_dict() == moments.state_dict()


def test_returns_to_go_sum_each_reward_and_every_later_one_within_the_answer() -> None:
    returns = losses.returns_to_go(t([0.1, 0.2, 1.0, 9.0], [0.5, 0.0, 0.0, 0.0]), t([1, 1, 1, 0], [1, 0, 0, 0]))
    assert returns.tolist() == [pytest.approx([1.3, 1.2, 1.0, 0.0]), pytest.approx([0.5, 0.0, 0.0, 0.0])]


def test_affine_fit_is_least_squares_over_masked_tokens() -> None:
    # y = 2x - 1 on the masked tokens; the unmasked (x=100, y=-50) must not pull the fit
    slope, intercept = losses.affine_fit(t([0, 1, 2, 100]), t([-1, 1, 3, -50]), t([1, 1, 1, 0]))
    assert (slope, intercept) == (pytest.approx(2.0), pytest.approx(-1.0))
    # noisy: x 0,1,2,3 and y 0,2,1,3 (means 1.5) -> cov (2.25 - .25 - .25 + 2.25) / 4 = 1, var 5 / 4 = 1.25,
    # slope 1 / 1.25 = 0.8, intercept 1.5 - 0.8 * 1.5 = 0.3
    slope, intercept = losses.affine_fit(t([0, 1, 2, 3]), t([0, 2, 1, 3]), t([1, 1, 1, 1]))
    assert (slope, intercept) == (pytest.approx(0.8), pytest.approx(0.3))
    # a constant predictor carries no information: slope 0, intercept the targets' mean
    assert losses.affine_fit(t([1, 1, 1]), t([0, 3, 6]), t([1, 1, 1])) == (0.0, pytest.approx(3.0))


# -- critic-free estimators and loss aggregation ------------------------------------------------


def test_loss_aggregations_by_hand_and_micro_batches_add_up_to_the_minibatch() -> None:
    # two answers: 1 token of loss 3, and 3 tokens of loss 1 (a 4th position is padding, loss 99)
    per_token, mask = t([3, 0, 0, 0], [1, 1, 1, 99]), t([1, 0, 0, 0], [1, 1, 1, 0])
    assert losses.aggregate(per_token, mask, "dapo", 2, 4, 4).item() == pytest.approx(6 / 4)  # every token the same
    assert losses.aggregate(per_token, mask, "grpo", 2, 4, 4).item() == pytest.approx((3 + 1) / 2)  # per answer
    assert losses.aggregate(per_token, mask, "dr_grpo", 2, 4, 4).item() == pytest.approx(6 / (2 * 4))  # constant
    for loss_type in losses.LOSS_TYPES:  # the shares of two micro-batches sum to the minibatch's loss
        whole = losses.aggregate(per_token, mask, loss_type, 2, 4, 4)
        parts = [losses.aggregate(per_token[i : i + 1], mask[i : i + 1], loss_type, 2, 4, 4) for i in range(2)]
        assert sum(parts).item() == pytest.approx(whole.item())
    with pytest.raises(ValueError, match="unknown loss_type"):
        losses.aggregate(per_token, mask, "mean", 2, 4, 4)


def test_group_relative_advantages_by_hand() -> None:
    # two prompts, three answers each: scores 1, 2, 3 (mean 2, unbiased std 1) and 5, 5, 5 (all equal)
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    scaled = losses.group_relative(scores, 3, scale=True)
    assert scaled.tolist() == pytest.approx([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), 0.0, 0.0, 0.0])
    assert losses.group_relative(scores, 3, scale=False).tolist() == pytest.approx([-1, 0, 1, 0, 0, 0])
    assert torch.isfinite(scaled).all()  # a group whose answers all score the same: advantage 0, not NaN
    assert losses.group_spread(scores, 3) == pytest.approx((0.5, 0.5))  # mean std (1 + 0) / 2; half the groups flat
    with pytest.raises(ValueError, match="groups of 4"):
        losses.group_relative(scores, 4)


def test_leave_one_out_advantages_by_hand() -> None:
    # answers 1, 2, 6: baselines mean(2, 6) = 4, mean(1, 6) = 3.5, mean(1, 2) = 1.5
    scores = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
    assert losses.leave_one_out(scores, 3).tolist() == pytest.approx([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        losses.leave_one_out(scores, 1)


def test_a_critic_free_advantage_reaches_every_token_of_an_answer_cut_at_max_length() -> None:
    # answer 0 ended after 2 tokens; answer 1 was cut at the length limit (every position real)
    mask = t([1, 1, 0], [1, 1, 1])
    kl = t([0.1, 0.2, 0.0], [0.0, 0.1, 0.3])
    # without a KL penalty in the reward (GRPO's loss-term KL), every token of an answer gets its baselined score
    rewards = losses.token_rewards(torch.tensor([1.5, -0.5]), kl, mask, 0.0)
    assert losses.returns_to_go(rewards, mask).tolist() == [pytest.approx([1.5, 1.5, 0]), pytest.approx([-0.5] * 3)]
    # with it (kl_coef .5), a token's advantage is the score minus the KL penalties from it to the end
    rewards = losses.token_rewards(torch.tensor([1.5, -0.5]), kl, mask, 0.5)
    returns = losses.returns_to_go(rewards, mask)
    assert returns.tolist() == [pytest.approx([1.35, 1.4, 0]), pytest.approx([-0.7, -0.7, -0.65])]


def test_reinforce_pp_advantages_are_returns_whitened_over_the_batch() -> None:
    mask = t([1, 1], [1, 0])
    rewards = losses.token_rewards(torch.tensor([2.0, 0.0]), t([0.0, 0.0], [0.0, 0.0]), mask, 0.1)
    returns = losses.returns_to_go(rewards, mask)  # [[2, 2], [0, 0]] over tokens 2, 2, 0: mean 4/3
    advantages = losses.whiten(returns, mask)
    std = math.sqrt(((2 - 4 / 3) ** 2 * 2 + (4 / 3) ** 2) / 2)  # unbiased over the 3 real tokens
    expected = [(2 - 4 / 3) / std, (2 - 4 / 3) / std, (0 - 4 / 3) / std]
    assert [advantages[0, 0].item(), advantages[0, 1].item(), advantages[1, 0].item()] == pytest.approx(expected)
    assert advantages[1, 1].item() == 0.0


SETTINGS = [  # (temperature, top_p, top_k): plain softmax, temperature, top-p, top-k, both
    (1.0, 1.0, 0),
    (0.7, 1.0, 0),
    (0.9, 0.8, 0),
    (1.0, 1.0, 5),
    (0.8, 0.9, 12),
]


def sampler_distribution(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """What generate() draws from: its warpers in the order it applies them (temperature, top-k, top-p)."""
    processors = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    flat = logits.reshape(-1, logits.shape[-1])
    return torch.log_softmax(processors(None, flat), -1).view_as(logits)


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
@pytest.mark.parametrize("chunk_elements", [1 << 24, 3 * 50])  # one chunk; chunks of 3 positions, the last of 2
def test_chunked_token_logprobs_are_the_sampled_distributions_and_their_gradient(
    temperature: float, top_p: float, top_k: int, chunk_elements: int
) -> None:
    """The chunked projection gives the log-probs, entropy and gradients of the distribution generate() samples.

    That is log_softmax of head(hidden) after generate()'s own temperature, top-k and top-p processors;
    tokens drawn from it, and one that the cut left out (its log-prob must be finite: a reference's
    top-p set can exclude what the policy drew).
    """
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)  # a trainable head with a bias: every gradient path is used
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    weights = torch.randn(2, 7)  # an arbitrary incoming gradient
    settings = SamplingSettings(max_new_tokens=7, temperature=temperature, top_p=top_p, top_k=top_k)
    with torch.no_grad():
        drawn = sampler_distribution(head(hidden), temperature, top_p, top_k)
    tokens = torch.multinomial(drawn.exp().view(-1, 50), 1).view(2, 7)
    if settings.truncates:  # position (0, 0) gets a token outside its kept set
        tokens[0, 0] = int(drawn[0, 0].argmin())
        assert drawn[0, 0, tokens[0, 0]] == -math.inf

    logprobs, entropy = token_logprobs(hidden, head, tokens, settings, with_entropy=True, chunk_elements=chunk_elements)
    (logprobs * weights).sum().backward()
    chunked = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    for t in (hidden, head.weight, head.bias):
        t.grad = None

    cut = sampler_distribution(head(hidden), temperature, top_p, top_k)  # with gradients
    kept = cut.isfinite()
    kept[0, 0, tokens[0, 0]] = True  # the drawn token is always in: its own logit, renormalised with it
    logits = (head(hidden) / temperature).masked_fill(~kept, -math.inf)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (expected * weights).sum().backward()
    assert torch.isfinite(logprobs).all()
    assert torch.allclose(logprobs, expected, atol=1e-6)
    with torch.no_grad():
        probs = logits.softmax(-1)
        expected_entropy = -torch.special.xlogy(probs, probs).sum(-1)
    assert entropy is not None and not entropy.requires_grad
    assert torch.allclose(entropy, expected_entropy, atol=1e-6)
    for a, b in zip(chunked, [hidden.grad, head.weight.grad, head.bias.grad], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    if settings.truncates:  # the cut is really applied: a plain log-softmax would differ
        plain = torch.log_softmax(head(hidden) / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
        assert (logprobs - plain).abs().max() > 1e-3


def test_chunked_token_logprobs_under_mixed_precision_match_the_full_logits() -> None:
    """Under bf16 autocast (the real recipes' compute dtype) forward and recomputed backward use bf16 projections."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(3, 5, 16, requires_grad=True)
    tokens = torch.randint(0, 40, (3, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, entropy = token_logprobs(hidden, head, tokens, SamplingSettings(5), chunk_elements=4 * 40)
        expected = selective_log_softmax(head(hidden).float(), tokens)
    assert entropy is None and logprobs.dtype == torch.float32
    assert torch.allclose(logprobs, expected, atol=1e-5)
    (grad,) = torch.autograd.grad(logprobs.sum(), hidden)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden)
    assert torch.allclose(grad, expected_grad, atol=2e-2, rtol=2e-2)
