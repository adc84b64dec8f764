"""What differs between the RL trainer's modes, as small objects chosen once when the trainer is built.

:class:`~rlhf.ppo.trainer.PPOTrainer` is one loop for PPO and the critic-free GRPO, RLOO and
REINFORCE++. Two choices of its config change what some steps of that loop do; each is an object
the trainer picks in ``__init__`` and calls at those steps, so the iteration tests no mode flags:

* where the KL to the reference acts (:func:`kl_placement`): nowhere (``kl_coef`` 0: the reference is
  never run), in the per-token rewards (``kl_penalty: reward``, InstructGPT, REINFORCE++) or in the
  policy loss (``kl_penalty: loss``, GRPO);
* how advantages are estimated (:func:`estimator`): GAE over a critic (:class:`GAE`, which also holds
  the critic's half of the update: its optimizer group, value loss and first-iteration calibration),
  or from the scores alone (:class:`GroupBaseline` for GRPO and RLOO, :class:`ReinforcePP`), with no
  value model in memory and no value half.

Shapes: ``B`` episodes, ``R`` response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from rlhf import distributed as dist
from rlhf.policy.roles import POLICY, VALUE, SharedBase
from rlhf.policy.sampler import PolicySampler, Trajectory, chunks
from rlhf.ppo import losses
from rlhf.ppo.config import PPOConfig


@dataclass(frozen=True)
class Targets:
    """What an update fits, computed from a trajectory by :meth:`PPOTrainer.advantages` (B x R unless noted)."""

    advantages: torch.Tensor  # GAE (whitened), or a critic-free estimator's
    kl: torch.Tensor  # per-token KL estimate to the reference (0 past EOS; all 0 when kl_coef is 0)
    rewards: torch.Tensor  # per-token rewards: -kl_coef * kl (in reward mode), plus the score at the last token
    scores: torch.Tensor  # B: rewards after the missing-EOS penalty, normalisation and clipping
    values: torch.Tensor | None = None  # the critic's values at sampling time (on the returns' scale); gae only
    returns: torch.Tensor | None = None  # advantages + values, before whitening: the critic's targets; gae only


# ------------------------------------------------------------------------------------------------
# Where the KL to the reference acts


class NoKL:
    """``kl_coef`` 0: no reference pass during training, no KL in rewards or loss, none logged or adapted."""

    uses_reference = False  # whether the scoring pass measures the reference's log-probs
    # whether the advantages need the sampling policy's log-probs before the update (a scoring pass of
    # the policy); without, one optimizer step per rollout lets the update measure them (measures_in_update)
    needs_logprobs_before_update = False

    def estimate(self, trajectory: Trajectory) -> torch.Tensor:
        """The per-token KL the advantages see (B x R, 0 past EOS)."""
        return torch.zeros_like(trajectory.samples.mask)

    def reward_coef(self) -> float:
        """The coefficient of the per-token KL penalty in the rewards."""
        return 0.0

    def add_to_loss(
        self, per_token: torch.Tensor, new_logprobs: torch.Tensor, batch: Trajectory, stats: dict[str, list[float]]
    ) -> torch.Tensor:
        """The policy's per-token loss on a micro-batch, with this placement's KL term."""
        return per_token

    def measured_by_update(self, targets: Targets, trajectory: Trajectory, measured: torch.Tensor) -> Targets:
        """The targets with the KL at sampling time, where only the update measured the sampling policy."""
        return targets

    def metrics(
        self, seq_kl: torch.Tensor, scores: torch.Tensor, mean: Callable[[torch.Tensor], float]
    ) -> dict[str, float]:
        """The KL's metrics: its mean per answer, the coefficient, and the reward net of the penalty."""
        return {}

    def adapt(self, metrics: dict[str, float], episodes: int) -> None:
        """Steer an adaptive coefficient with this iteration's KL (fixed coefficients do not move)."""


class _ToReference(NoKL):
    """A KL to the reference (``kl_coef`` > 0): measured, logged and steered, placed by the subclasses."""

    uses_reference = True

    def __init__(self, controller: losses.KLController, estimator: str) -> None:
        self.controller = controller
        self.estimator = estimator  # k1 or k3 (PPOConfig.kl_estimator)

    def _estimate(self, logprobs: torch.Tensor, trajectory: Trajectory) -> torch.Tensor:
        if trajectory.ref_logprobs is None:
            raise RuntimeError("a KL to the reference needs the reference's log-probs")
        return losses.kl_estimate(logprobs, trajectory.ref_logprobs, self.estimator) * trajectory.samples.mask

    def estimate(self, trajectory: Trajectory) -> torch.Tensor:
        if trajectory.logprobs is None:  # measured by the update (measures_in_update): see measured_by_update
            return torch.zeros_like(trajectory.samples.mask)
        return self._estimate(trajectory.logprobs, trajectory)

    def measured_by_update(self, targets: Targets, trajectory: Trajectory, measured: torch.Tensor) -> Targets:
        if trajectory.logprobs is not None:
            return targets
        return replace(targets, kl=self._estimate(measured, trajectory))

    def metrics(
        self, seq_kl: torch.Tensor, scores: torch.Tensor, mean: Callable[[torch.Tensor], float]
    ) -> dict[str, float]:
        coef = self.controller.coef
        return {
            "objective/kl": mean(seq_kl),
            "objective/kl_coef": coef,
            "objective/non_score_reward": mean(-coef * seq_kl),
            "objective/rlhf_reward": mean(scores - coef * seq_kl),
        }

    def adapt(self, metrics: dict[str, float], episodes: int) -> None:
        self.controller.update(metrics["objective/kl"], episodes)


class KLInRewards(_ToReference):
    """``-kl_coef * KL`` at every response token of the rewards (InstructGPT), known before the update."""

    needs_logprobs_before_update = True

    def estimate(self, trajectory: Trajectory) -> torch.Tensor:
        if trajectory.logprobs is None:
            raise RuntimeError("a KL penalty in the rewards needs the sampling policy's log-probs before the update")
        return self._estimate(trajectory.logprobs, trajectory)

    def reward_coef(self) -> float:
        return self.controller.coef


class KLInLoss(_ToReference):
    """``kl_coef`` times the KL of the policy being updated, added to its per-token loss (GRPO's KL term)."""

    def add_to_loss(
        self, per_token: torch.Tensor, new_logprobs: torch.Tensor, batch: Trajectory, stats: dict[str, list[float]]
    ) -> torch.Tensor:
        coef = self.controller.coef
        if coef <= 0 or batch.ref_logprobs is None:
            return per_token
        kl = losses.kl_estimate(new_logprobs, batch.ref_logprobs, self.estimator)
        stats["kl_loss"].append(float(losses.masked_mean(kl.detach(), batch.samples.mask)))
        return per_token + coef * kl


def kl_placement(config: PPOConfig, controller: losses.KLController) -> NoKL:
    """Where ``config`` puts the KL: nowhere when ``kl_coef`` is 0, else as ``kl_penalty`` says."""
    if not config.uses_reference:
        return NoKL()
    placement = KLInRewards if config.kl_penalty == "reward" else KLInLoss
    return placement(controller, str(config.kl_estimator))


# ------------------------------------------------------------------------------------------------
# How advantages are estimated


class Estimator:
    """A critic-free estimator: advantages from the scores alone; the update has no value half."""

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer groups this estimator trains besides the policy's."""
        return []

    def targets(
        self, scores: torch.Tensor, kl: torch.Tensor, penalty: float, trajectory: Trajectory, first: bool
    ) -> Targets:
        """Per-token rewards (``-penalty * kl``, plus the score at the last token) and advantages.

        ``scores`` are shaped (missing-EOS penalty, normalisation, clipping); ``first``: the run's first iteration.
        """
        raise NotImplementedError

    def value_backward(
        self,
        trajectory: Trajectory,
        targets: Targets,
        rows: torch.Tensor,
        micro: int,
        tokens: float,
        stats: dict[str, list[float]],
    ) -> None:
        """The value half of a minibatch's update: nothing without a critic."""

    def metrics(self, targets: Targets, mask: torch.Tensor) -> dict[str, float]:
        """The critic's metrics: none without one."""
        return {}


class GroupBaseline(Estimator):
    """GRPO / RLOO: the score minus its group's baseline replaces the score; a token's advantage is its return.

    Without a KL penalty in the rewards every token of an answer carries the same advantage, as in GRPO.
    """

    def __init__(self, baseline: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.baseline = baseline  # losses.group_relative or losses.leave_one_out, over each prompt's group

    def targets(
        self, scores: torch.Tensor, kl: torch.Tensor, penalty: float, trajectory: Trajectory, first: bool
    ) -> Targets:
        mask = trajectory.samples.mask
        rewards = losses.token_rewards(self.baseline(scores), kl, mask, penalty)
        return Targets(losses.returns_to_go(rewards, mask), kl, rewards, scores)


class ReinforcePP(Estimator):
    """REINFORCE++: returns-to-go of the per-token rewards, whitened over the whole batch (every rank's)."""

    def targets(
        self, scores: torch.Tensor, kl: torch.Tensor, penalty: float, trajectory: Trajectory, first: bool
    ) -> Targets:
        mask = trajectory.samples.mask
        rewards = losses.token_rewards(scores, kl, mask, penalty)
        advantages = losses.whiten(losses.returns_to_go(rewards, mask), mask, reduce=dist.all_sum)
        return Targets(advantages, kl, rewards, scores)


class GAE(Estimator):
    """PPO's GAE over a critic (the value adapter and head of the shared base), and the critic's training."""

    def __init__(self, roles: SharedBase, sampler: PolicySampler, config: PPOConfig) -> None:
        self.roles = roles
        self.sampler = sampler
        self.config = config

    def param_groups(self) -> list[dict[str, Any]]:
        value_lr = self.config.value_learning_rate or self.config.learning_rate
        return [{"params": self.roles.trainable_parameters(VALUE), "lr": value_lr, "name": VALUE}]

    def targets(
        self, scores: torch.Tensor, kl: torch.Tensor, penalty: float, trajectory: Trajectory, first: bool
    ) -> Targets:
        """GAE over the critic's values, whitened; the returns (before whitening) are the critic's targets."""
        config, mask = self.config, trajectory.samples.mask
        rewards = losses.token_rewards(scores, kl, mask, penalty)
        if config.whiten_rewards:
            rewards = losses.whiten(rewards, mask, shift_mean=False, reduce=dist.all_sum)
        if trajectory.values is None:
            raise RuntimeError("gae needs the critic's values")
        values = trajectory.values
        if first and config.value_init == "reward":
            values = self.calibrate(values, rewards, mask)
        advantages, returns = losses.gae(rewards, values, mask, config.gamma, config.lam)
        advantages = losses.whiten(advantages, mask, reduce=dist.all_sum)
        return Targets(advantages, kl, rewards, scores, values=values, returns=returns)

    def calibrate(self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Put a critic copied from the reward model on the scale of its targets, once, before its first use.

        The copied head predicts raw reward-model scores (and, before the last token, scores of
        partial answers), while the returns are normalised, clipped, KL-shaped scores: a
        value-clipped critic that starts there cannot catch up (the tiny recipe's first explained
        variance was -0.29). The head is mapped by the least-squares affine fit of the first batch's
        returns-to-go on its predictions, and the batch's values with it; what the reward model
        knows is kept (the slope), the scale and offset become the returns'.
        """
        slope, intercept = losses.affine_fit(values, losses.returns_to_go(rewards, mask), mask, dist.all_sum)
        self.roles.affine_value_head(slope, intercept)
        return (values * slope + intercept) * mask

    def value_backward(
        self,
        trajectory: Trajectory,
        targets: Targets,
        rows: torch.Tensor,
        micro: int,
        tokens: float,
        stats: dict[str, list[float]],
    ) -> None:
        """The critic's clipped value loss on a minibatch, forward and backward as a pair (token-weighted)."""
        roles = self.roles
        if targets.values is None or targets.returns is None:
            raise RuntimeError("a critic needs the targets' values and returns")
        roles.use(VALUE)
        for part in chunks(len(rows), micro):
            batch = trajectory.samples.select(rows[part])
            width = batch.response.shape[1]
            with self.sampler.autocast():
                hidden = self.sampler.response_hidden(batch)
            new_values = roles.values(hidden)
            vloss, part_stats = losses.value_loss(
                new_values,
                targets.values[rows[part], :width],
                targets.returns[rows[part], :width],
                batch.mask,
                self.config.cliprange_value,
            )
            (vloss * float(batch.mask.sum()) / max(tokens, 1.0)).backward()
            stats["value_loss"].append(float(vloss.detach()))
            stats["value_clipfrac"].append(float(part_stats["value_clipfrac"]))
        roles.use(POLICY)

    def metrics(self, targets: Targets, mask: torch.Tensor) -> dict[str, float]:
        if targets.values is None or targets.returns is None:
            raise RuntimeError("a critic's metrics need the targets' values and returns")
        return {"value/explained_variance": losses.explained_variance(targets.values, targets.returns, mask)}


def estimator(config: PPOConfig, roles: SharedBase, sampler: PolicySampler) -> Estimator:
    """``config.advantage_estimator``'s estimator; only GAE has a critic, and the base must hold one exactly then."""
    name = config.advantage_estimator
    if name == "gae":
        if not roles.has_critic:
            raise ValueError("advantage_estimator gae needs a critic: a shared base with a value adapter and head")
        return GAE(roles, sampler, config)
    if roles.has_critic:
        raise ValueError(f"advantage_estimator {name!r} on a shared base with a critic: critic-free ones hold none")
    group = int(config.num_generations or 1)
    if name == "grpo":
        return GroupBaseline(partial(losses.group_relative, group_size=group, scale=config.scale_rewards))
    if name == "rloo":
        return GroupBaseline(partial(losses.leave_one_out, group_size=group))
    if name == "reinforce_pp":
        return ReinforcePP()
    raise ValueError(f"advantage_estimator: unknown {name!r}")
