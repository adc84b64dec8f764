"""The online RL loop over a :class:`~rlhf.policy.roles.SharedBase`: rollout, scoring, advantages, update.

PPO with GAE and the critic-free GRPO, RLOO and REINFORCE++ are one trainer: the same rollout
(``num_generations`` answers per prompt), scoring, clipped surrogate, checkpoints and metrics.
What differs between modes is chosen once, in ``__init__``, as objects of :mod:`rlhf.ppo.modes`:
the advantage estimator (GAE, which brings the critic's optimizer group and value loss, or a
critic-free one, with neither) and where the KL to the reference acts (nowhere, the rewards or the
loss). Checkpoints are :mod:`rlhf.ppo.checkpoint`; metrics files and trackers :mod:`rlhf.ppo.tracking`.

One iteration, in the order of TRL 1.12's PPO (kept so the two can be compared step for step):

1. sample responses for a batch of prompts with the :class:`~rlhf.policy.sampler.PolicySampler` (policy
   adapter, through its rollout engine, :mod:`rlhf.policy.engine`, synced to the policy first; sampling
   settings from this config alone, any of the model's EOS ids);
2. recompute the sampled tokens' log-probs with a forward pass (an engine's own log-probs come from
   another computation, a merged copy or another precision, and generate()'s would cost a batch x
   length x vocabulary tensor; where the engine reports them, their mean distance to the ones the
   update uses is logged as ``rollout/logprob_gap``), and the reference's with
   adapters disabled; with one optimizer step per rollout and no KL in the rewards, the update's
   own forward pass, before its step, is that measurement (:attr:`PPOTrainer.measures_in_update`);
3. values per response token from the value adapter and head;
4. the reward model's score of prompt + response rendered exactly as the reward stage rendered its
   data, minus a penalty when the response did not end with EOS; normalised by running moments;
5. per-token rewards ``-kl_coef * KL`` plus the score at the last token; on the first iteration
   a critic copied from the reward model is mapped onto the scale of these returns
   (:meth:`rlhf.ppo.modes.GAE.calibrate`); GAE; whitened advantages;
6. ``ppo_epochs`` passes of clipped policy and value losses over minibatches, each role's forward
   and backward as a pair, gradients clipped per role and averaged over ranks; an iteration stops
   before the optimizer step that would follow a minibatch whose approximate KL passed the limit.

Steps 1-4 and evaluation run in eval mode under ``no_grad`` (:meth:`PolicySampler.scoring`), and the
shared base has no dropout at all (TRL's PPO did the same): the reward and value adapters come from
a reward run whose ``lora_dropout`` is usually 0.05, and a score must not change from call to call.

Shapes: ``B`` episodes, ``P`` (left-padded) prompt tokens, ``R`` response tokens.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from rlhf import distributed as dist
from rlhf import ensemble, models, overoptimisation, sharding
from rlhf.policy.loading import load_judge
from rlhf.policy.roles import POLICY, SharedBase
from rlhf.policy.sampler import PolicySampler, Samples, Trajectory, chunks
from rlhf.ppo import checkpoint, losses, modes
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.modes import Targets
from rlhf.ppo.tracking import record_step, start_trackers

logger = logging.getLogger(__name__)


class PPOTrainer:
    """Trains the policy and value adapters of a SharedBase with PPO; resumable from checkpoints."""

    def __init__(
        self,
        roles: SharedBase,
        tokenizer: PreTrainedTokenizerBase,
        config: PPOConfig,
        train_prompts: Dataset,
        eval_prompts: Dataset | None = None,
    ) -> None:
        self.roles = roles
        self.tokenizer = tokenizer
        self.config = config
        self.train_prompts = train_prompts
        self.eval_prompts = eval_prompts
        self.judge = load_judge(config.gold_judge)
        self.device = next(p for p in roles.parameters()).device
        self.output_dir = Path(config.output_dir)
        self.sampler = PolicySampler.from_config(roles, tokenizer, config, config, models.autocast_dtype(config))
        self.estimator = modes.estimator(config, roles, self.sampler)  # GAE (with the critic) or critic-free

        groups = [{"params": roles.trainable_parameters(POLICY), "lr": config.learning_rate, "name": POLICY}]
        groups += self.estimator.param_groups()
        if config.optim == "paged_adamw_8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.PagedAdamW8bit(groups, weight_decay=config.weight_decay)
        else:
            # The fused kernel updates all of LoRA's many small tensors in one call; the default on
            # CPU loops over them (measured on CPU: 0.75 vs 4.2 ms a step for 113 LoRA-sized tensors).
            fused = all(p.device.type in ("cpu", "cuda") for p in self.trainable_parameters())
            self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=fused)
        # transformers' schedule, stepped once per iteration (each iteration is one rollout and its update)
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.steps,
        )
        self.kl_controller = losses.KLController(config.kl_coef, config.adaptive_kl_target, config.kl_horizon)
        self.kl = modes.kl_placement(config, self.kl_controller)  # nowhere, in the rewards or in the loss
        self.score_moments = losses.RunningMoments()
        self.step = 0
        self.epoch = 0
        self.cursor = 0  # position in this epoch's prompt order
        self.history: list[dict[str, float]] = []
        self.warned = False  # over-optimisation: warned once per run (rlhf.overoptimisation)
        self.trackers = start_trackers(config.report_to, self.output_dir) if dist.rank() == 0 else []

    # ------------------------------------------------------------------------------------------
    # Data

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter the optimizer steps: the policy's LoRA, and the value LoRA and head with a critic."""
        return [p for role in self.roles.trainable for p in self.roles.trainable_parameters(role)]

    @property
    def group_size(self) -> int:
        return int(self.config.num_generations or 1)

    def _next_prompts(self) -> list[Any]:
        """This rank's share of the next global batch, in a seeded order that checkpoints can restore.

        Each prompt appears ``num_generations`` times in a row: the answers to one prompt form a group.
        """
        prompts = self._next_distinct_prompts()
        return [prompt for prompt in prompts for _ in range(self.group_size)]

    def _next_distinct_prompts(self) -> list[Any]:
        size, world, rank = self.config.rollout_batch_size // self.group_size, dist.world_size(), dist.rank()
        needed = size * world
        batch: list[Any] = []
        while len(batch) < needed:
            order = torch.randperm(
                len(self.train_prompts), generator=torch.Generator().manual_seed(self.config.seed + self.epoch)
            )
            take = order[self.cursor : self.cursor + needed - len(batch)].tolist()
            batch += [self.train_prompts[i]["prompt"] for i in take]
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return batch[rank * size : (rank + 1) * size]

    # ------------------------------------------------------------------------------------------
    # Advantages and update

    def advantages(self, trajectory: Trajectory) -> Targets:
        """Shaped scores, per-token rewards and the advantage estimator's advantages (and GAE's returns).

        Every estimator starts from the same scores (missing-EOS penalty, running normalisation,
        clipping) and per-token rewards (``-kl_coef * KL`` when the KL is in the rewards, plus the
        score at the last token); :mod:`rlhf.ppo.modes` has what each estimator does with them:

        * ``gae``: GAE over the critic's values, whitened (PPO);
        * ``grpo`` / ``rloo``: the score minus its group's baseline (:func:`losses.group_relative`,
          :func:`losses.leave_one_out`) replaces the score, and the advantage of a token is the return
          that follows it (without a KL penalty in the reward: the same value for all of an answer's
          tokens, as in GRPO);
        * ``reinforce_pp``: returns-to-go of the rewards, whitened over the whole batch (REINFORCE++).
        """
        config = self.config
        scores = trajectory.scores - config.missing_eos_penalty * (~trajectory.samples.ended).float()
        if config.normalize_reward:
            self.score_moments.update(scores, dist.all_sum)
            scores = self.score_moments.normalize(scores, config.reward_clip)
        elif config.reward_clip is not None:
            scores = scores.clamp(-config.reward_clip, config.reward_clip)
        kl = self.kl.estimate(trajectory)  # 0 without a reference, or until the update measures the policy
        return self.estimator.targets(scores, kl, self.kl.reward_coef(), trajectory, first=self.step == 0)

    @property
    def measures_in_update(self) -> bool:
        """Whether the sampling policy's log-probs come from the update's forward pass, not a scoring pass.

        With one optimizer step per rollout (one epoch, one minibatch) every forward pass of the update
        runs before the policy moves, so it measures the policy that sampled; the separate pass is
        needed only when the KL shapes the rewards before the update. TRL's GRPO skips it the same way.
        """
        config = self.config
        one_step = config.ppo_epochs == 1 and config.mini_batch_size == config.rollout_batch_size
        return one_step and not self.kl.needs_logprobs_before_update

    def update(self, trajectory: Trajectory, targets: Targets) -> tuple[dict[str, float], torch.Tensor]:
        """Epochs over minibatches of the clipped surrogate (and, with a critic, the clipped value loss).

        Early stopping checks before stepping: a minibatch whose approximate KL to the rollout policy
        (measured on its forward pass, before its step) is over ``max_approx_kl`` is not applied, and
        the iteration ends there. No loss weight between policy and value: they are disjoint
        parameters, clipped separately, with Adam's per-parameter scaling, where a ``vf_coef`` would
        cancel out; ``value_learning_rate`` sets the critic's pace.

        Returns the statistics and the policy's log-prob of each response token at each row's last
        forward pass (B x R): with a trajectory without log-probs (:attr:`measures_in_update`), the
        sampling policy's, which the first forward pass also uses as the ratio's denominator.
        """
        config, roles, samples = self.config, self.roles, trajectory.samples
        measured = torch.zeros_like(samples.mask)
        micro = config.micro_batch_size or config.mini_batch_size
        stats: dict[str, list[float]] = {
            k: []
            for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "entropy", "kl_loss")
        }
        roles.peft.train()
        epochs_done, steps_done, stop = 0, 0, False
        for _ in range(config.ppo_epochs):
            order = self._shuffled_rows(len(samples.texts))
            for mb in chunks(len(order), config.mini_batch_size):
                rows = order[mb]
                tokens = float(samples.mask[rows].sum())
                self.optimizer.zero_grad(set_to_none=True)
                local_kl = self._policy_backward(trajectory, targets, rows, micro, tokens, measured, stats)
                self.estimator.value_backward(trajectory, targets, rows, micro, tokens, stats)  # none: critic-free
                approx_kl = float(dist.all_sum(local_kl.detach().reshape(1))[0]) / dist.world_size()
                stats["approx_kl"].append(approx_kl)
                if config.max_approx_kl is not None and approx_kl > config.max_approx_kl:
                    stop = True  # every rank sees the same all-reduced value, so all stop together
                    break
                dist.average_gradients(self.trainable_parameters())
                for role in roles.trainable:
                    torch.nn.utils.clip_grad_norm_(roles.trainable_parameters(role), config.max_grad_norm)
                self.optimizer.step()
                steps_done += 1
            epochs_done += 1
            if stop:
                break
        self.optimizer.zero_grad(set_to_none=True)
        out = {
            f"policy/{k}" if k in ("clipfrac", "approx_kl", "entropy", "kl_loss") else f"loss/{k}": float(np.mean(v))
            for k, v in stats.items()
            if v
        }
        out["policy/update_epochs"] = epochs_done
        out["policy/optimizer_steps"] = steps_done
        out["policy/early_stopped"] = float(stop)
        return out, measured

    def _policy_backward(
        self,
        trajectory: Trajectory,
        targets: Targets,
        rows: torch.Tensor,
        micro: int,
        tokens: float,
        measured: torch.Tensor,
        stats: dict[str, list[float]],
    ) -> torch.Tensor:
        """The policy's loss on a minibatch, forward and backward as a pair per micro-batch; its approximate KL.

        Token losses become a minibatch loss as ``loss_type`` says (:func:`losses.aggregate`); with the
        KL in the loss, the policy loss adds ``kl_coef`` times the k3 KL to the reference, per token,
        aggregated the same way (GRPO). Each row's log-probs are written into ``measured``.
        """
        config = self.config
        approx_kl = torch.zeros((), device=self.device)
        minibatch_loss = 0.0
        self.roles.use(POLICY)
        for part in chunks(len(rows), micro):
            batch = trajectory.select(rows[part])  # the rows, without columns that are padding in all
            advantages = targets.advantages[rows[part], : batch.samples.response.shape[1]]
            mask = batch.samples.mask
            with self.sampler.autocast():
                new_logprobs, entropies = self.sampler.response_logprobs(batch.samples, with_entropy=True)
            assert entropies is not None
            entropy = losses.masked_mean(entropies, mask)
            measured[rows[part], : mask.shape[1]] = new_logprobs.detach() * mask
            old_logprobs = batch.logprobs if batch.logprobs is not None else new_logprobs.detach()
            per_token, part_stats = losses.policy_loss(new_logprobs, old_logprobs, advantages, mask, config.cliprange)
            per_token = self.kl.add_to_loss(per_token, new_logprobs, batch, stats)  # unchanged unless in the loss
            loss = losses.aggregate(per_token, mask, config.loss_type, len(rows), tokens, config.max_new_tokens)
            loss.backward()
            minibatch_loss += float(loss.detach())
            share = float(mask.sum()) / max(tokens, 1.0)
            approx_kl += part_stats["approx_kl"] * share
            stats["clipfrac"].append(float(part_stats["clipfrac"]))
            stats["entropy"].append(float(entropy))
        stats["policy_loss"].append(minibatch_loss)
        return approx_kl

    def _shuffled_rows(self, count: int) -> torch.Tensor:
        """A random order of the rollout's rows for the minibatches: groups stay together when they are packed.

        Answers to one prompt share a packed row (:mod:`rlhf.policy.packing`) only when they are
        consecutive rows of one forward pass, so groups are shuffled rather than rows: a micro-batch
        then holds whole groups, or part of one (a micro-batch of 4 in groups of 8 packs 4 answers).
        """
        group = self.group_size
        if group > 1 and self.sampler.packs_groups:
            return (torch.randperm(count // group)[:, None] * group + torch.arange(group)).flatten()
        return torch.randperm(count)

    # ------------------------------------------------------------------------------------------
    # The loop

    def train_step(self) -> dict[str, float]:
        """One iteration: rollout, every role's scoring pass, advantages, then epochs of minibatch updates."""
        started = time.perf_counter()
        prompts = self._next_prompts()
        samples = self.sampler.generate(prompts)  # the policy adapter samples
        generated = time.perf_counter()
        # policy (unless the update measures it), reference (unless kl_coef is 0), value (gae), reward: no grad
        trajectory = self.sampler.score(samples, reference=self.kl.uses_reference, policy=not self.measures_in_update)
        scored = time.perf_counter()
        targets = self.advantages(trajectory)  # shaped rewards; GAE or a critic-free estimator
        update_stats, measured = self.update(trajectory, targets)  # policy then value, forward+backward per minibatch
        updated = time.perf_counter()
        targets = self.kl.measured_by_update(targets, trajectory, measured)  # the KL at sampling time
        times = (started, generated, scored, updated)
        metrics = self._metrics(samples, trajectory, targets, measured, times, update_stats)
        self.kl.adapt(metrics, len(prompts) * dist.world_size())  # an adaptive KL coefficient moves
        self.scheduler.step()
        self.step += 1
        return metrics

    def _metrics(
        self,
        samples: Samples,
        trajectory: Trajectory,
        targets: Targets,
        measured: torch.Tensor,
        times: tuple[float, float, float, float],
        update_stats: dict[str, float],
    ) -> dict[str, float]:
        """The iteration's metrics, over every rank's episodes; ``times``: started, generated, scored, updated."""
        started, generated, scored, updated = times
        scores = trajectory.scores
        seq_kl = targets.kl.sum(1)
        n = float(len(samples.prompts))
        mean = lambda t: float(dist.all_sum(t.float().sum().reshape(1))[0]) / (n * dist.world_size())  # noqa: E731
        tokens = float(dist.all_sum(samples.mask.sum().reshape(1))[0])
        metrics = {
            "step": self.step + 1,
            "objective/score": mean(scores),
            **{f"reward/{name}": mean(value) for name, value in trajectory.reward_parts.items()},
            "response/length": mean(samples.mask.sum(1)),
            "response/eos_rate": mean(samples.ended),
            "time/generate": generated - started,
            "time/score": scored - generated,
            "time/update": updated - scored,
            "throughput/tokens_per_second": tokens / (updated - started),
            "throughput/episodes_per_second": n * dist.world_size() / (updated - started),
            "lr": self.scheduler.get_last_lr()[0],
            **update_stats,
        }
        if samples.engine_logprobs is not None:  # the rollout engine's log-probs against the ones the update used
            used = trajectory.logprobs if trajectory.logprobs is not None else measured
            gap = ((samples.engine_logprobs - used).abs() * samples.mask).sum().reshape(1)
            metrics["rollout/logprob_gap"] = float(dist.all_sum(gap)[0]) / max(tokens, 1.0)
        metrics |= self.kl.metrics(seq_kl, scores, mean)  # none when kl_coef is 0: the reference never ran
        metrics |= self.estimator.metrics(targets, samples.mask)  # the critic's explained variance
        if trajectory.members is not None and len(trajectory.members) > 1:  # a reward ensemble: each member, and
            metrics |= {f"reward/member_{i}": mean(scores) for i, scores in enumerate(trajectory.members)}
            metrics["reward/ensemble_std"] = mean(ensemble.disagreement(trajectory.members))  # how much they disagree
        if self.group_size > 1:
            metrics["reward/group_std"], metrics["reward/zero_std_groups"] = losses.group_spread(
                trajectory.scores, self.group_size
            )
        if self.roles.sharded:  # what this process holds of the sharded weights and of the optimizer's state
            local, total = sharding.local_share(self.roles)
            metrics["fsdp/param_share"] = local / total
            metrics["fsdp/optimizer_state_share"] = sharding.optimizer_state_share(self.optimizer)
        if self.judge is not None:
            metrics["gold/score"] = mean(
                torch.tensor([self.judge(p, t) for p, t in zip(samples.prompts, samples.texts, strict=True)])
            )
        return metrics

    def train(self) -> list[dict[str, float]]:
        config = self.config
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            desc="ppo",
            unit="it",
            disable=config.disable_tqdm or dist.rank() != 0,
        )
        while self.step < config.steps:
            metrics = self.train_step()
            self.history.append(metrics)
            flags = overoptimisation.check(self.history)
            metrics["overoptimisation/flagged"] = float(bool(flags))
            if flags and not self.warned and dist.rank() == 0:  # once: the report lists them all at the end
                logger.warning("possible reward over-optimisation at %s", flags[0])
                self.warned = True
            if dist.rank() == 0:
                record_step(metrics, self.step, self.output_dir, self.trackers, config.logging_steps, bar)
            bar.update(1)
            if self.step % config.save_steps == 0 or self.step == config.steps:
                self.save_checkpoint()
        bar.close()
        for tracker in self.trackers:
            tracker.finish()
        return self.history

    # ------------------------------------------------------------------------------------------
    # Saving and resuming (rlhf.ppo.checkpoint)

    def save_adapter(self, role: str, folder: Path) -> None:
        """A role's LoRA as a plain PEFT adapter folder; every process calls it (a sharded run gathers)."""
        checkpoint.save_adapter(self.roles, role, folder)

    def save_checkpoint(self) -> Path:
        """Everything the run needs to continue, written atomically (:func:`rlhf.ppo.checkpoint.save`)."""
        return checkpoint.save(self)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore everything a checkpoint holds, so the run continues as if never stopped."""
        checkpoint.load(self, folder)
