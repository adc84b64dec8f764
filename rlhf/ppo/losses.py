"""PPO's arithmetic as small pure functions over padded ``(batch, response_length)`` tensors.

Every function takes a ``mask`` (1 for real response tokens, 0 after EOS / padding) instead of
inferring it from pad ids, so "did it stop?" and "which tokens count" are never confused. Names
follow the papers: Schulman et al. 2017 (PPO, https://arxiv.org/abs/1707.06347), Schulman et al.
2015 (GAE, https://arxiv.org/abs/1506.02438), Ziegler et al. 2019 (KL-penalised RLHF and the
adaptive KL controller, https://arxiv.org/abs/1909.08593), Schulman's note on KL estimators
(k1, k3: http://joschu.net/blog/kl-approx.html), and for the critic-free estimators Shao et al. 2024
(GRPO, https://arxiv.org/abs/2402.03300), Liu et al. 2025 (Dr. GRPO, https://arxiv.org/abs/2503.20783),
Ahmadian et al. 2024 (RLOO, https://arxiv.org/abs/2402.14740) and Hu 2025 (REINFORCE++,
https://arxiv.org/abs/2501.03262).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# A reduction over ranks: given a tensor of local partial sums, returns the global sums. Identity
# in one process; `all_reduce(SUM)` under torchrun.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is 1 (over all of them, or along ``dim``)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _identity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) variance over masked tokens, across every rank ``reduce`` sums over."""
    stats = reduce(torch.stack([masked_sum(x, mask), masked_sum(x * x, mask), mask.sum()]).double())
    total, total_sq, count = stats[0], stats[1], stats[2].clamp(min=1)
    mean = total / count
    variance = (total_sq / count - mean * mean).clamp(min=0) * count / (count - 1).clamp(min=1)
    return mean.to(x.dtype), variance.to(x.dtype)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce: Reduce = _identity) -> torch.Tensor:
    """Normalise masked values to unit variance (and zero mean); padding stays 0."""
    mean, variance = masked_moments(x, mask, reduce)
    out = (x - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled by the policy.

    k1 = log p - log q is unbiased but can be negative per token; k3 = (r - 1) - log r with
    r = q / p is unbiased and always >= 0, with lower variance when the two are close.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (use 'k1' or 'k3')")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * KL`` at every response token, plus the sequence score at its last token.

    ``scores``: (B,), ``kl``/``mask``: (B, T). The last token is the last masked one (EOS when the
    response stopped, the final generated token when it was cut off).
    """
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()  # (B,)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t ;  A_t = delta_t + gamma * lam * A_{t+1}, with
    V and A zero after the last real token. returns = advantages + values.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (PPO eq. 7) per token, as a loss to minimise, with its diagnostics.

    Returns the B x T per-token loss (to be reduced by :func:`aggregate`, which decides how tokens
    and answers are weighted) and ``clipfrac`` (share of tokens where the clip was active) and
    ``approx_kl`` (k3 estimate of KL(old || new), the early-stopping signal), averaged over tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        }
    return torch.maximum(unclipped, clipped) * mask, stats


LOSS_TYPES = ("dapo", "grpo", "dr_grpo")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, sequences: int, tokens: float, max_length: int
) -> torch.Tensor:
    """One micro-batch's share of a minibatch loss, under the aggregation TRL's GRPO documents.

    ``sequences`` and ``tokens`` count the whole minibatch (all its micro-batches), so the shares of
    its micro-batches add up to the minibatch loss whatever the gradient accumulation:

    * ``dapo``: every token weighs the same (sum over the minibatch's tokens / their number), as PPO
      always did here; no length bias;
    * ``grpo``: each answer's mean token loss, averaged over answers (GRPO's paper): a token of a short
      answer weighs more, so short correct and long wrong answers are favoured;
    * ``dr_grpo``: sum over tokens / (answers x ``max_length``), a constant (Dr. GRPO): no length bias
      and no dependence on the batch's lengths.
    """
    if loss_type == "dapo":
        return per_token.mul(mask).sum() / max(tokens, 1.0)
    if loss_type == "grpo":
        return masked_mean(per_token, mask, dim=1).sum() / sequences
    if loss_type == "dr_grpo":
        return per_token.mul(mask).sum() / (sequences * max_length)
    raise ValueError(f"unknown loss_type {loss_type!r} (use one of {', '.join(LOSS_TYPES)})")


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1 or len(scores) % group_size:
        raise ValueError(f"{len(scores)} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def group_relative(scores: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO's advantage of each answer: its score minus its group's mean (divided by the group's std if ``scale``).

    ``scores`` (B,) holds ``group_size`` consecutive answers to each prompt. The std is the unbiased
    one plus 1e-4, as in TRL, so a group whose answers all score the same gets advantage 0, not NaN.
    ``scale=False`` is Dr. GRPO's choice: dividing by the std up-weights prompts that are nearly always
    answered right or wrong.
    """
    groups = _groups(scores, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantage: each answer's score minus the mean of the other answers to the same prompt."""
    groups = _groups(scores, group_size)
    if group_size < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 answers per prompt")
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def group_spread(scores: torch.Tensor, group_size: int) -> tuple[float, float]:
    """Mean within-group std of the scores, and the share of groups whose answers all score the same.

    A group with zero spread teaches nothing under a group baseline (TRL logs the same share).
    """
    groups = _groups(scores, group_size)
    std = groups.std(1) if group_size > 1 else torch.zeros(len(groups))
    return float(std.mean()), float(torch.isclose(std, torch.zeros_like(std)).float().mean())


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2), and its clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask)}
    return loss, stats


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted Monte-Carlo returns: the sum of each token's reward and every later one's."""
    masked = rewards * mask
    return (masked.flip(1).cumsum(1).flip(1)) * mask


def affine_fit(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _identity) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y ~ slope * x + intercept`` over masked tokens (all ranks).

    Used once, to put a critic copied from the reward model on the scale of its targets: the fitted
    predictions have the targets' mean, and their explained variance on the fitted batch is the
    squared correlation (>= 0), where a raw copy can start far below 0.
    """
    parts = [masked_sum(x, mask), masked_sum(y, mask), masked_sum(x * x, mask), masked_sum(x * y, mask), mask.sum()]
    sums = reduce(torch.stack(parts).double())
    sx, sy, sxx, sxy, n = (float(v) for v in sums)
    n = max(n, 1.0)
    variance = sxx / n - (sx / n) ** 2
    slope = (sxy / n - sx * sy / n**2) / variance if variance > 1e-12 else 0.0
    return slope, sy / n - slope * sx / n


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, <= 0 is no better than a constant."""
    _, var_returns = masked_moments(returns, mask)
    _, var_error = masked_moments(returns - values, mask)
    return float(1.0 - var_error / var_returns) if var_returns > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# Stateful helpers (small, with explicit state so checkpoints can save and restore them)


@dataclass
class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019, sec. 2.2).

    Adaptive: ``coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon`` after each batch of
    ``n`` episodes, so the measured KL drifts towards ``target``.
    """

    coef: float
    target: float | None = None
    horizon: float = 10_000.0

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_episodes / self.horizon

    def state_dict(self) -> dict[str, float | None]:
        return {"coef": self.coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.coef = float(state["coef"])  # type: ignore[arg-type]
        self.target = state["target"]
        self.horizon = float(state["horizon"])  # type: ignore[arg-type]


@dataclass
class RunningMoments:
    """Running mean and standard deviation of scores (Chan et al.'s parallel update), for normalisation."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-4

    def update(self, values: torch.Tensor, reduce: Reduce = _identity) -> None:
        stats = reduce(
            torch.stack([values.sum(), (values * values).sum(), torch.tensor(float(values.numel()))]).double()
        )
        n = float(stats[2])
        if n == 0:
            return
        batch_mean = float(stats[0]) / n
        batch_var = max(float(stats[1]) / n - batch_mean * batch_mean, 0.0)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta * delta * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def normalize(self, values: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        out = (values - self.mean) / max(self.std, 1e-6)
        return out.clamp(-clip, clip) if clip is not None else out

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
