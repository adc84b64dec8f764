"""The online RL loop over a :class:`~rlhf.ppo.roles.SharedBase`: rollout, scoring, advantages, update.

PPO with GAE and the critic-free GRPO, RLOO and REINFORCE++ are one trainer: the same rollout
(``num_generations`` answers per prompt), scoring, clipped surrogate, checkpoints and metrics;
only :meth:`PPOTrainer.advantages` differs (``advantage_estimator``), and a critic-free run has no
value adapter, head, optimizer group or value loss.

One iteration, in the order of TRL 1.12's PPO (kept so the two can be compared step for step):

1. sample responses for a batch of prompts with the :class:`~rlhf.ppo.sampler.PolicySampler` (policy
   adapter, through its rollout engine, :mod:`rlhf.engine`, synced to the policy first; sampling
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
   (:meth:`PPOTrainer._calibrate_critic`); GAE; whitened advantages;
6. ``ppo_epochs`` passes of clipped policy and value losses over minibatches, each role's forward
   and backward as a pair, gradients clipped per role and averaged over ranks; an iteration stops
   before the optimizer step that would follow a minibatch whose approximate KL passed the limit.

Steps 1-4 and evaluation run in eval mode under ``no_grad`` (:meth:`PolicySampler.scoring`), and the
shared base has no dropout at all (TRL's PPO did the same): the reward and value adapters come from
a reward run whose ``lora_dropout`` is usually 0.05, and a score must not change from call to call.

Shapes: ``B`` episodes, ``P`` (left-padded) prompt tokens, ``R`` response tokens.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker
from datasets import Dataset
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from rlhf import ensemble, overoptimisation, sharding
from rlhf.ppo import distributed as dist
from rlhf.ppo import losses
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.roles import POLICY, VALUE, VALUE_HEAD_FILE, SharedBase
from rlhf.ppo.sampler import PolicySampler, Trajectory, chunks

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STEP_METRICS_FILE = "metrics.jsonl"
TRACKING_PROJECT = "rlhf"  # the project of trackers that log to a service (wandb, trackio, mlflow, ...)


@dataclass(frozen=True)
class Targets:
    """What an update fits, computed from a trajectory by :meth:`PPOTrainer.advantages` (B x R unless noted)."""

    advantages: torch.Tensor  # GAE (whitened), or a critic-free estimator's
    kl: torch.Tensor  # per-token KL estimate to the reference (0 past EOS; all 0 when kl_coef is 0)
    rewards: torch.Tensor  # per-token rewards: -kl_coef * kl (in reward mode), plus the score at the last token
    scores: torch.Tensor  # B: rewards after the missing-EOS penalty, normalisation and clipping
    values: torch.Tensor | None = None  # the critic's values at sampling time (on the returns' scale); gae only
    returns: torch.Tensor | None = None  # advantages + values, before whitening: the critic's targets; gae only


def start_trackers(names: list[str], output_dir: Path) -> list[GeneralTracker]:
    """Accelerate's trackers for ``report_to`` (checked installed by the config), started; first process only.

    The tracker classes, not an ``Accelerator``: its ``end_training`` destroys the process group, which
    the stage still needs after training (the adapters are gathered, the policy evaluated), and the
    trainer prepares nothing else with it (see :mod:`rlhf.ppo.distributed`). Trackers that write files
    (TensorBoard) write under ``output_dir/runs``; the others log to the project ``rlhf``. The run's
    configuration is in the run folder (``rlhf_config.yaml``), not sent to the trackers.
    """
    trackers = []
    for name in names:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        if tracker_class.requires_logging_directory:
            tracker = tracker_class("runs", str(output_dir))
        else:
            tracker = tracker_class(TRACKING_PROJECT)
        # its methods ask accelerate's process state whether this is the main process, which sets that state
        # up (joining the process group torchrun started); its logger refuses to run without it
        tracker.start()
        trackers.append(tracker)
    return trackers


def load_judge(spec: str | None) -> Callable[[Any, str], float] | None:
    """``"package.module:function"`` to the function (the gold judge of a task with one)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


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
        self.sampler = PolicySampler.from_config(roles, tokenizer, config)

        groups = [{"params": roles.trainable_parameters(POLICY), "lr": config.learning_rate, "name": POLICY}]
        if roles.has_critic:
            value_lr = config.value_learning_rate or config.learning_rate
            groups.append({"params": roles.trainable_parameters(VALUE), "lr": value_lr, "name": VALUE})
        if config.optim == "paged_adamw_8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.PagedAdamW8bit(groups, weight_decay=config.weight_decay)
        else:
            # The fused kernel updates all of LoRA's many small tensors in one call; the default on
            # CPU loops over them (measured on CPU: 0.75 vs 4.2 ms a step for 113 LoRA-sized tensors).
            fused = all(p.device.type in ("cpu", "cuda") for p in self._trainable())
            self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=fused)
        # transformers' schedule, stepped once per iteration (each iteration is one rollout and its update)
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.steps,
        )
        self.kl_controller = losses.KLController(config.kl_coef, config.adaptive_kl_target, config.kl_horizon)
        self.score_moments = losses.RunningMoments()
        self.step = 0
        self.epoch = 0
        self.cursor = 0  # position in this epoch's prompt order
        self.history: list[dict[str, float]] = []
        self.warned = False  # over-optimisation: warned once per run (rlhf.overoptimisation)
        self.trackers = start_trackers(config.report_to, self.output_dir) if dist.rank() == 0 else []

    # ------------------------------------------------------------------------------------------
    # Data

    def _trainable(self) -> list[torch.nn.Parameter]:
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

    def _calibrate_critic(self, values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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

    def advantages(self, trajectory: Trajectory) -> Targets:
        """Shaped scores, per-token rewards and the advantage estimator's advantages (and GAE's returns).

        Every estimator starts from the same scores (missing-EOS penalty, running normalisation,
        clipping) and per-token rewards (``-kl_coef * KL`` when ``kl_penalty`` is ``reward``, plus the
        score at the last token):

        * ``gae``: GAE over the critic's values, whitened (PPO);
        * ``grpo`` / ``rloo``: the score minus its group's baseline (:func:`losses.group_relative`,
          :func:`losses.leave_one_out`) replaces the score, and the advantage of a token is the return
          that follows it (without a KL penalty in the reward: the same value for all of an answer's
          tokens, as in GRPO);
        * ``reinforce_pp``: returns-to-go of the rewards, whitened over the whole batch (REINFORCE++).
        """
        config = self.config
        samples = trajectory.samples
        mask = samples.mask
        scores = trajectory.scores - config.missing_eos_penalty * (~samples.ended).float()
        if config.normalize_reward:
            self.score_moments.update(scores, dist.all_sum)
            scores = self.score_moments.normalize(scores, config.reward_clip)
        elif config.reward_clip is not None:
            scores = scores.clamp(-config.reward_clip, config.reward_clip)
        penalty = self.kl_controller.coef if config.kl_penalty == "reward" else 0.0
        if trajectory.ref_logprobs is None or trajectory.logprobs is None:
            if trajectory.ref_logprobs is not None and penalty:
                raise RuntimeError(
                    "a KL penalty in the rewards needs the sampling policy's log-probs before the update"
                )
            kl = torch.zeros_like(mask)  # no reference; or measured by the update (train_step)
        else:
            kl = losses.kl_estimate(trajectory.logprobs, trajectory.ref_logprobs, str(config.kl_estimator)) * mask
        estimator = config.advantage_estimator
        if estimator == "gae":
            rewards = losses.token_rewards(scores, kl, mask, penalty)
            if config.whiten_rewards:
                rewards = losses.whiten(rewards, mask, shift_mean=False, reduce=dist.all_sum)
            if trajectory.values is None:
                raise RuntimeError("gae needs the critic's values")
            values = trajectory.values
            if self.step == 0 and config.value_init == "reward":
                values = self._calibrate_critic(values, rewards, mask)
            advantages, returns = losses.gae(rewards, values, mask, config.gamma, config.lam)
            advantages = losses.whiten(advantages, mask, reduce=dist.all_sum)
            return Targets(advantages, kl, rewards, scores, values=values, returns=returns)
        if estimator == "reinforce_pp":
            rewards = losses.token_rewards(scores, kl, mask, penalty)
            advantages = losses.whiten(losses.returns_to_go(rewards, mask), mask, reduce=dist.all_sum)
            return Targets(advantages, kl, rewards, scores)
        if estimator == "grpo":
            baselined = losses.group_relative(scores, self.group_size, config.scale_rewards)
        elif estimator == "rloo":
            baselined = losses.leave_one_out(scores, self.group_size)
        else:
            raise ValueError(f"advantage_estimator: unknown {estimator!r}")
        rewards = losses.token_rewards(baselined, kl, mask, penalty)
        return Targets(losses.returns_to_go(rewards, mask), kl, rewards, scores)

    @property
    def measures_in_update(self) -> bool:
        """Whether the sampling policy's log-probs come from the update's forward pass, not a scoring pass.

        With one optimizer step per rollout (one epoch, one minibatch) every forward pass of the update
        runs before the policy moves, so it measures the policy that sampled; the separate pass is
        needed only when the KL shapes the rewards before the update. TRL's GRPO skips it the same way.
        """
        config = self.config
        one_step = config.ppo_epochs == 1 and config.mini_batch_size == config.rollout_batch_size
        return one_step and (config.kl_penalty == "loss" or not config.uses_reference)

    def update(self, trajectory: Trajectory, targets: Targets) -> tuple[dict[str, float], torch.Tensor]:
        """Epochs over minibatches of the clipped surrogate (and, with a critic, the clipped value loss).

        Token losses become a minibatch loss as ``loss_type`` says (:func:`losses.aggregate`); with
        ``kl_penalty: loss`` the policy loss adds ``kl_coef`` times the k3 KL to the reference, per
        token, aggregated the same way (GRPO). Early stopping checks before stepping: a minibatch
        whose approximate KL to the rollout policy (measured on its forward pass, before its step) is
        over ``max_approx_kl`` is not applied, and the iteration ends there. No loss weight between
        policy and value: they are disjoint parameters, clipped separately, with Adam's per-parameter
        scaling, where a ``vf_coef`` would cancel out; ``value_learning_rate`` sets the critic's pace.

        Returns the statistics and the policy's log-prob of each response token at each row's last
        forward pass (B x R): with a trajectory without log-probs (:attr:`measures_in_update`), the
        sampling policy's, which the first forward pass also uses as the ratio's denominator.
        """
        config, roles, samples = self.config, self.roles, trajectory.samples
        measured = torch.zeros_like(samples.mask)
        micro = config.micro_batch_size or config.mini_batch_size
        kl_loss_coef = self.kl_controller.coef if config.kl_penalty == "loss" else 0.0
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
                approx_kl = torch.zeros((), device=self.device)
                minibatch_loss = 0.0
                # policy: forward and backward as a pair
                roles.use(POLICY)
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
                    per_token, part_stats = losses.policy_loss(
                        new_logprobs, old_logprobs, advantages, mask, config.cliprange
                    )
                    if kl_loss_coef > 0 and batch.ref_logprobs is not None:
                        kl = losses.kl_estimate(new_logprobs, batch.ref_logprobs, str(config.kl_estimator))
                        per_token = per_token + kl_loss_coef * kl
                        stats["kl_loss"].append(float(losses.masked_mean(kl.detach(), mask)))
                    loss = losses.aggregate(per_token, mask, config.loss_type, len(rows), tokens, config.max_new_tokens)
                    loss.backward()
                    minibatch_loss += float(loss.detach())
                    share = float(mask.sum()) / max(tokens, 1.0)
                    approx_kl += part_stats["approx_kl"] * share
                    stats["clipfrac"].append(float(part_stats["clipfrac"]))
                    stats["entropy"].append(float(entropy))
                stats["policy_loss"].append(minibatch_loss)
                if roles.has_critic:
                    self._value_backward(trajectory, targets, rows, micro, tokens, stats)
                approx_kl = float(dist.all_sum(approx_kl.detach().reshape(1))[0]) / dist.world_size()
                stats["approx_kl"].append(approx_kl)
                if config.max_approx_kl is not None and approx_kl > config.max_approx_kl:
                    stop = True  # every rank sees the same all-reduced value, so all stop together
                    break
                dist.average_gradients(self._trainable())
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

    def _shuffled_rows(self, count: int) -> torch.Tensor:
        """A random order of the rollout's rows for the minibatches: groups stay together when they are packed.

        Answers to one prompt share a packed row (:mod:`rlhf.ppo.packing`) only when they are
        consecutive rows of one forward pass, so groups are shuffled rather than rows: a micro-batch
        then holds whole groups, or part of one (a micro-batch of 4 in groups of 8 packs 4 answers).
        """
        group = self.group_size
        if group > 1 and self.sampler.packs_groups:
            return (torch.randperm(count // group)[:, None] * group + torch.arange(group)).flatten()
        return torch.randperm(count)

    def _value_backward(
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

    # ------------------------------------------------------------------------------------------
    # The loop

    def train_step(self) -> dict[str, float]:
        """One iteration: rollout, every role's scoring pass, advantages, then epochs of minibatch updates."""
        started = time.perf_counter()
        prompts = self._next_prompts()
        samples = self.sampler.generate(prompts)  # the policy adapter samples
        generated = time.perf_counter()
        # policy (unless the update measures it), reference (unless kl_coef is 0), value (gae), reward: no grad
        config = self.config
        trajectory = self.sampler.score(samples, reference=config.uses_reference, policy=not self.measures_in_update)
        scored = time.perf_counter()
        targets = self.advantages(trajectory)  # shaped rewards; GAE or a critic-free estimator
        update_stats, measured = self.update(trajectory, targets)  # policy then value, forward+backward per minibatch
        updated = time.perf_counter()
        if trajectory.logprobs is None and trajectory.ref_logprobs is not None:  # the KL at sampling time
            kl = losses.kl_estimate(measured, trajectory.ref_logprobs, str(config.kl_estimator)) * samples.mask
            targets = replace(targets, kl=kl)

        scores = trajectory.scores
        seq_kl = targets.kl.sum(1)
        n = float(len(prompts))
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
        if trajectory.ref_logprobs is not None:  # kl_coef 0: the reference is never run during training
            coef = self.kl_controller.coef
            metrics |= {
                "objective/kl": mean(seq_kl),
                "objective/kl_coef": coef,
                "objective/non_score_reward": mean(-coef * seq_kl),
                "objective/rlhf_reward": mean(scores - coef * seq_kl),
            }
        if targets.values is not None and targets.returns is not None:
            metrics["value/explained_variance"] = losses.explained_variance(
                targets.values, targets.returns, samples.mask
            )
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
            metrics["fsdp/optimizer_state_share"] = self._optimizer_state_share()
        if self.judge is not None:
            metrics["gold/score"] = mean(
                torch.tensor([self.judge(p, t) for p, t in zip(samples.prompts, samples.texts, strict=True)])
            )
        if "objective/kl" in metrics:
            self.kl_controller.update(metrics["objective/kl"], int(n) * dist.world_size())
        self.scheduler.step()
        self.step += 1
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
                with (self.output_dir / STEP_METRICS_FILE).open("a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                if self.step % config.logging_steps == 0:
                    for tracker in self.trackers:
                        tracker.log({k: v for k, v in metrics.items() if k != "step"}, step=self.step)
                postfix = {"score": f"{metrics['objective/score']:.2f}"}
                if "objective/kl" in metrics:
                    postfix["kl"] = f"{metrics['objective/kl']:.2f}"
                if "gold/score" in metrics:
                    postfix["gold"] = f"{metrics['gold/score']:.2f}"
                bar.set_postfix(postfix)
            bar.update(1)
            if self.step % config.save_steps == 0 or self.step == config.steps:
                self.save_checkpoint()
        bar.close()
        for tracker in self.trackers:
            tracker.finish()
        return self.history

    # ------------------------------------------------------------------------------------------
    # Saving and resuming

    def save_adapter(self, role: str, folder: Path) -> None:
        """A role's LoRA as a plain PEFT adapter folder (loads with PeftModel.from_pretrained).

        Every process calls it: a sharded run gathers the whole adapter (a collective), the first process writes.
        """
        state = get_peft_model_state_dict(self.roles.peft, adapter_name=role)
        state = {k: sharding.full(v).detach().cpu().contiguous() for k, v in state.items()}
        if dist.rank() != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(folder / "adapter_model.safetensors"))
        config = self.roles.peft.peft_config[role]
        # the base this run loaded, where it is now: a value adapter started from the reward model's would
        # name the base the reward run recorded (another place, once the run folders moved)
        config.base_model_name_or_path = self.roles.peft.get_base_model().name_or_path
        inference_mode = config.inference_mode
        config.inference_mode = True
        config.save_pretrained(str(folder))
        config.inference_mode = inference_mode

    def _trainable_checksum(self) -> float:
        return float(sum(sharding.full(p).detach().double().sum() for p in self._trainable()))

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically: a staging folder renamed once every rank has written its part.

        A run killed while saving leaves only the hidden staging folder, which ``--resume`` ignores.
        """
        final = self.output_dir / f"checkpoint-{self.step}"
        staging = self.output_dir / f".checkpoint-{self.step}.partial"
        if dist.rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        for role in self.roles.trainable:
            self.save_adapter(role, staging / role)
        if self.roles.has_critic:
            self.roles.save_value_head(staging / VALUE_HEAD_FILE)
        optimizer = self._optimizer_state()
        if dist.rank() == 0:
            torch.save(optimizer, staging / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "cursor": self.cursor,
                "kl_controller": self.kl_controller.state_dict(),
                "score_moments": self.score_moments.state_dict(),
                "world_size": dist.world_size(),
            }
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        dist.barrier()
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            # every rank must hold the same weights; a resume compares these
            "trainable_checksum": self._trainable_checksum(),
        }
        torch.save(rng, staging / f"rng_state_{dist.rank()}.pth")
        dist.barrier()
        if dist.rank() == 0:
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            self._rotate_checkpoints()
        dist.barrier()
        return final

    def _optimizer_state_share(self) -> float:
        """Elements of the optimizer's sharded state tensors (Adam's moments) this process holds, of all."""
        states = [t for state in self.optimizer.state.values() for t in state.values() if isinstance(t, DTensor)]
        return sum(t.to_local().numel() for t in states) / max(1, sum(t.numel() for t in states))

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state to save; sharded, the whole of it (a collective), keyed by parameter name."""
        if not self.roles.sharded:
            return self.optimizer.state_dict()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.roles, self.optimizer, options=options)

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if not self.roles.sharded:
            self.optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(self.roles, self.optimizer, state, options=StateDictOptions(full_state_dict=True))

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        checkpoints = sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in checkpoints[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore everything a checkpoint holds, so the run continues as if never stopped."""
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        if state["world_size"] != dist.world_size():
            raise ValueError(f"{folder} was written by {state['world_size']} processes; resume with as many")
        for role in self.roles.trainable:
            self.roles.load_adapter(role, folder / role)
        if self.roles.has_critic:
            self.roles.load_value_head(folder / VALUE_HEAD_FILE)
        self.roles.use(POLICY)
        self._load_optimizer_state(torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=False))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])
        rng = torch.load(folder / f"rng_state_{dist.rank()}.pth", weights_only=False)
        if abs(rng["trainable_checksum"] - self._trainable_checksum()) > 1e-6 * max(
            1.0, abs(rng["trainable_checksum"])
        ):
            raise ValueError(f"{folder}: restored weights differ from those rank {dist.rank()} saved")
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        metrics_file = self.output_dir / STEP_METRICS_FILE
        if metrics_file.exists():  # drop what a killed run logged after this checkpoint
            kept = [line for line in metrics_file.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            self.history = [json.loads(line) for line in kept]
            if dist.rank() == 0:
                metrics_file.write_text("".join(line + "\n" for line in kept))
