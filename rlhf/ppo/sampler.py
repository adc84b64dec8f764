"""The one policy sampler of the shared base: sample, then measure (log-probs, KL, values, rewards).

It owns no optimizer and trains nothing: PPO's trainer composes it for its rollouts, ``rlhf eval``
uses it alone to answer held-out prompts with both policies, and the tests use it to check that the
sampler is the policy. Every measuring pass runs in eval mode under ``no_grad`` (:meth:`scoring`).

Shapes: ``B`` episodes, ``P`` (left-padded) prompt tokens, ``R`` response tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import selective_log_softmax

from rlhf import data, sampling
from rlhf.config import PPOConfig
from rlhf.ppo import rewards
from rlhf.ppo.roles import POLICY, VALUE, SharedBase


@dataclass(frozen=True)
class Samples:
    """Sampled answers to a batch of prompts: what :meth:`PolicySampler.generate` returns.

    Frozen: each pass that follows adds its measurements in a new object (:class:`Trajectory`),
    so what was sampled cannot be changed by what is computed from it.
    """

    prompts: list[Any]  # B prompts, as given (text or chat messages)
    query: torch.Tensor  # B x P long, left-padded prompt tokens
    query_mask: torch.Tensor  # B x P long
    response: torch.Tensor  # B x R long, pad after EOS
    mask: torch.Tensor  # B x R float: 1 up to and including EOS
    texts: list[str]  # B decoded responses, EOS and padding removed
    ended: torch.Tensor  # B bool: the response stopped with EOS

    @property
    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and response as one batch: ids and attention mask, B x (P + R)."""
        return torch.cat([self.query, self.response], 1), torch.cat([self.query_mask, self.mask.long()], 1)


@dataclass(frozen=True)
class Trajectory:
    """Samples measured by every role of the shared base: what PPO's losses read (:meth:`PolicySampler.score`)."""

    samples: Samples
    logprobs: torch.Tensor  # B x R float: the sampling policy's log-prob of each response token (0 past EOS)
    ref_logprobs: torch.Tensor | None  # B x R float: the same under the reference; None when no KL is used
    values: torch.Tensor | None  # B x R float: the critic's value before each response token; None: no critic
    scores: torch.Tensor  # B float: the weighted sum of reward_parts (before the EOS penalty)
    reward_parts: dict[str, torch.Tensor]  # B float each: raw reward-model score ("model") and each function's


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PolicySampler:
    """Samples answers from the policy (or the reference) of a :class:`SharedBase` and measures them."""

    def __init__(
        self,
        roles: SharedBase,
        tokenizer: PreTrainedTokenizerBase,
        settings: sampling.SamplingSettings,
        forward_batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        reward_functions: rewards.RewardFunctions | None = None,
        reward_model_weight: float = 1.0,
    ) -> None:
        self.roles = roles
        self.reward_functions = reward_functions
        # the components of the training reward and their weights, in the order they are logged
        self.reward_weights = {rewards.MODEL: reward_model_weight} if roles.has_reward_model else {}
        if reward_functions is not None:
            self.reward_weights.update(zip(reward_functions.names, reward_functions.weights, strict=True))
        self.tokenizer = tokenizer
        self.settings = settings
        self.forward_batch_size = forward_batch_size
        self.autocast_dtype = autocast_dtype
        self.device = next(p for p in roles.parameters()).device
        self.eos_ids = sampling.eos_token_ids(roles.causal_lm, tokenizer)

    @classmethod
    def from_config(cls, roles: SharedBase, tokenizer: PreTrainedTokenizerBase, config: PPOConfig) -> PolicySampler:
        """The sampler of a run: its sampling settings, forward batch size, mixed precision and reward."""
        settings = sampling.SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.top_k)
        dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
        functions = (
            rewards.RewardFunctions.load(config.reward_funcs, config.reward_weights) if config.reward_funcs else None
        )
        return cls(roles, tokenizer, settings, config.forward_batch_size, dtype, functions, config.reward_model_weight)

    def autocast(self) -> Any:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Forward passes that only measure (sampling, log-probs, values, rewards): no grad, eval mode."""
        with torch.no_grad(), self.roles.inference(), self.autocast():
            yield

    def encode_prompts(self, prompts: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            if isinstance(p, list)
            else p
            for p in prompts
        ]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            encoded = self.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=isinstance(prompts[0], str)
            )
        finally:
            self.tokenizer.padding_side = side
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    def generate(self, prompts: Sequence[Any], reference: bool = False) -> Samples:
        """Sample responses (policy, or the SFT reference), cut at the first EOS."""
        roles = self.roles
        query, query_mask = self.encode_prompts(prompts)
        checkpointing = roles.causal_lm.is_gradient_checkpointing
        if checkpointing:  # generating under checkpointing in train mode samples different tokens
            roles.causal_lm.gradient_checkpointing_disable()
        try:
            with self.scoring(), roles.reference() if reference else nullcontext():
                response = sampling.sample(
                    roles.peft, query, query_mask, self.settings, self.eos_ids, self.tokenizer.pad_token_id
                )
        finally:
            if checkpointing:
                roles.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        response, mask, ended = sampling.cut_at_eos(response, self.eos_ids, self.tokenizer.pad_token_id)
        texts = sampling.decode(self.tokenizer, response, self.eos_ids, self.tokenizer.pad_token_id)
        return Samples(list(prompts), query, query_mask, response, mask, texts, ended)

    def response_logits(self, ids: torch.Tensor, mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Logits predicting each response token (B x R x V), at the sampling temperature."""
        hidden = self.roles.hidden_states(ids, mask)[:, prompt_length - 1 : -1]
        return self.roles.token_logits(hidden).float() / self.settings.temperature

    def logprobs(self, samples: Samples, reference: bool = False) -> torch.Tensor:
        """Log-prob of each sampled token under the policy (or the reference), B x R, 0 past EOS."""
        ids, mask = samples.sequences
        out = []
        with self.scoring(), self.roles.reference() if reference else nullcontext():
            for part in chunks(len(ids), self.forward_batch_size):
                logits = self.response_logits(ids[part], mask[part], samples.query.shape[1])
                out.append(selective_log_softmax(logits, samples.response[part]))
        return torch.cat(out) * samples.mask

    def kl_to_reference(self, samples: Samples) -> torch.Tensor:
        """Exact KL(policy || reference) summed over each response's tokens (one value per answer).

        At every response position the full next-token distributions are compared (a sum over the
        vocabulary), so each term is >= 0; summed along the policy's own sampled answer this is an
        unbiased estimate of the sequence-level KL with far less variance than the sampled log-ratio,
        which goes negative on small evaluations.
        """
        ids, mask = samples.sequences
        prompt_length = samples.query.shape[1]
        out = []
        with self.scoring():
            for part in chunks(len(ids), self.forward_batch_size):
                policy = torch.log_softmax(self.response_logits(ids[part], mask[part], prompt_length), -1)
                with self.roles.reference():
                    reference = torch.log_softmax(self.response_logits(ids[part], mask[part], prompt_length), -1)
                per_token = (policy.exp() * (policy - reference)).sum(-1).clamp_min(0)
                out.append((per_token * samples.mask[part]).sum(1))
        return torch.cat(out)

    def values(self, samples: Samples) -> torch.Tensor:
        """The critic's value before each response token, B x R, 0 past EOS."""
        ids, mask = samples.sequences
        prompt_length = samples.query.shape[1]
        out = []
        self.roles.use(VALUE)
        try:
            with self.scoring():
                for part in chunks(len(ids), self.forward_batch_size):
                    hidden = self.roles.hidden_states(ids[part], mask[part])[:, prompt_length - 1 : -1]
                    out.append(self.roles.values(hidden))
        finally:
            self.roles.use(POLICY)
        return torch.cat(out) * samples.mask

    def reward_scores(self, prompts: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Reward-model scores of prompt + response, tokenized as the reward stage tokenized its pairs."""
        sequences = [data.scoring_ids(self.tokenizer, p, t) for p, t in zip(prompts, texts, strict=True)]
        return self.score_token_ids(sequences)

    def score_token_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Reward-model scores of already tokenized sequences (right-padded in batches)."""
        scores = []
        with self.scoring():
            for part in chunks(len(sequences), self.forward_batch_size):
                ids, mask = data.right_pad(sequences[part], self.tokenizer.pad_token_id)
                scores.append(self.roles.rewards(ids.to(self.device), mask.to(self.device)).float())
        return torch.cat(scores)

    def rewards(self, samples: Samples) -> dict[str, torch.Tensor]:
        """Every reward component's raw score of each answer (B,), by name: ``"model"`` and each function's."""
        parts: dict[str, torch.Tensor] = {}
        if self.roles.has_reward_model:
            parts[rewards.MODEL] = self.reward_scores(samples.prompts, samples.texts)
        if self.reward_functions is not None:
            ids = [r[: int(n)] for r, n in zip(samples.response.tolist(), samples.mask.sum(1).tolist(), strict=True)]
            for name, value in self.reward_functions(samples.prompts, samples.texts, ids).items():
                parts[name] = value.to(self.device)
        return parts

    def reward(self, samples: Samples) -> torch.Tensor:
        """The weighted sum of :meth:`rewards`: the training reward of each answer (B,)."""
        return rewards.total(self.rewards(samples), self.reward_weights)

    def score(self, samples: Samples, reference: bool = True) -> Trajectory:
        """Every role's pass over the samples: log-probs, the reference's (if ``reference``), values (if
        the base has a critic) and the reward's components."""
        parts = self.rewards(samples)
        return Trajectory(
            samples=samples,
            logprobs=self.logprobs(samples),
            ref_logprobs=self.logprobs(samples, reference=True) if reference else None,
            values=self.values(samples) if self.roles.has_critic else None,
            scores=rewards.total(parts, self.reward_weights),
            reward_parts=parts,
        )
