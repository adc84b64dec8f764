"""The one policy sampler of the shared base: sample, then measure (log-probs, KL, values, rewards).

It owns no optimizer and trains nothing: PPO's trainer composes it for its rollouts, ``rlhf eval``
uses it alone to answer held-out prompts with both policies, and the tests use it to check that the
sampler is the policy. Every measuring pass runs in eval mode under ``no_grad`` (:meth:`scoring`).

Shapes: ``B`` episodes, ``P`` (left-padded) prompt tokens, ``R`` response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import selective_log_softmax

from rlhf import data, engine, ensemble, sampling
from rlhf.ppo import packing, rewards
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.logprobs import token_logprobs
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
    # B x R float: the rollout engine's log-prob of each response token (0 past EOS); None: it reports none
    engine_logprobs: torch.Tensor | None = None

    @property
    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and response as one batch: ids and attention mask, B x (P + R)."""
        return torch.cat([self.query, self.response], 1), torch.cat([self.query_mask, self.mask.long()], 1)

    def select(self, rows: torch.Tensor) -> Samples:
        """These rows, without the columns that are padding in every one of them.

        Prompts are left-padded to the batch's longest and answers right-padded to its longest, so a
        minibatch of shorter ones carries columns that cost a forward and backward and change nothing:
        the leading columns where all these prompts are padding and the trailing ones past the longest
        of these answers. Each row keeps its tokens, positions (counted from the attention mask) and
        attention, so what is measured on it does not change; the padding does not cost compute.
        """
        query_mask = self.query_mask[rows]
        start = self.query.shape[1] - int(query_mask.sum(1).max())
        width = max(1, int(self.mask[rows].sum(1).max()))
        picked = rows.tolist()
        return Samples(
            prompts=[self.prompts[i] for i in picked],
            query=self.query[rows, start:],
            query_mask=query_mask[:, start:],
            response=self.response[rows, :width],
            mask=self.mask[rows, :width],
            texts=[self.texts[i] for i in picked],
            ended=self.ended[rows],
            engine_logprobs=None if self.engine_logprobs is None else self.engine_logprobs[rows, :width],
        )


@dataclass(frozen=True)
class Trajectory:
    """Samples measured by every role of the shared base: what PPO's losses read (:meth:`PolicySampler.score`)."""

    samples: Samples
    # B x R float: the sampling policy's log-prob of each response token (0 past EOS); None: the update
    # measures them with its own first forward pass (one optimizer step per rollout, PPOTrainer.measures_in_update)
    logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None  # B x R float: the same under the reference; None when no KL is used
    values: torch.Tensor | None  # B x R float: the critic's value before each response token; None: no critic
    scores: torch.Tensor  # B float: the weighted sum of reward_parts (before the EOS penalty)
    reward_parts: dict[str, torch.Tensor]  # B float each: raw reward-model score ("model") and each function's
    members: torch.Tensor | None = None  # K x B: each reward model's score (an ensemble's, standardised)

    def select(self, rows: torch.Tensor) -> Trajectory:
        """These rows, trimmed as :meth:`Samples.select` trims them (per-token tensors cut to the same width)."""
        samples = self.samples.select(rows)
        width = samples.response.shape[1]
        cut = lambda t: None if t is None else t[rows, :width]  # noqa: E731
        return Trajectory(
            samples=samples,
            logprobs=cut(self.logprobs),
            ref_logprobs=cut(self.ref_logprobs),
            values=cut(self.values),
            scores=self.scores[rows],
            reward_parts={name: value[rows] for name, value in self.reward_parts.items()},
            members=None if self.members is None else self.members[:, rows],
        )


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def by_length(samples: Samples, size: int, runs: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, Samples]]:
    """Batches of at most ``size`` rows, grouped by answer length and trimmed (:meth:`Samples.select`).

    For passes without gradients, where which rows share a batch changes nothing but the padding:
    each batch comes with its rows' indices, to put the results back in the samples' order. With
    ``runs`` (sizes of consecutive row runs, e.g. the answers to one prompt), a run stays in one batch
    (cut in pieces of ``size`` only when longer), so it can be packed; runs are ordered by their
    answers' total length.
    """
    runs = runs if runs is not None else [1] * len(samples.texts)
    units: list[range] = []  # consecutive rows that go together
    start = 0
    for run in runs:
        units += [range(first, min(first + size, start + run)) for first in range(start, start + run, size)]
        start += run
    answers = samples.mask.sum(1).tolist()
    totals = torch.tensor([sum(answers[unit.start : unit.stop]) for unit in units])
    batch: list[int] = []
    for index in torch.argsort(totals, stable=True).tolist():
        if batch and len(batch) + len(units[index]) > size:
            rows = torch.tensor(batch)
            yield rows, samples.select(rows)
            batch = []
        batch += units[index]
    if batch:
        rows = torch.tensor(batch)
        yield rows, samples.select(rows)


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
        pack_groups: bool = True,
        reward_aggregation: str = "mean",
        uwo_coef: float = 1.0,
        rollout_engine: str | engine.RolloutEngine = "auto",
    ) -> None:
        self.roles = roles
        # how an ensemble's members make one reward (rlhf.ensemble); one reward model is its own score
        self.reward_aggregation, self.uwo_coef = reward_aggregation, uwo_coef
        # answers to one prompt go through the model as one packed row when the model can take it (packing)
        self.packing_weight = roles.packing_weight if pack_groups else None
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
        # what samples the answers (rlhf.engine): one by name (generate() on this model, or a merged copy of
        # the policy), or an engine given over roles.peft
        self.engine = (
            engine.build(rollout_engine, roles.peft, self.eos_ids, tokenizer.pad_token_id, autocast_dtype)
            if isinstance(rollout_engine, str)
            else rollout_engine
        )

    @classmethod
    def from_config(cls, roles: SharedBase, tokenizer: PreTrainedTokenizerBase, config: PPOConfig) -> PolicySampler:
        """The sampler of a run: its sampling settings, forward batch size, mixed precision and reward."""
        settings = sampling.SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.top_k)
        dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
        functions = (
            rewards.RewardFunctions.load(config.reward_funcs, config.reward_weights) if config.reward_funcs else None
        )
        return cls(
            roles,
            tokenizer,
            settings,
            config.forward_batch_size,
            dtype,
            functions,
            config.reward_model_weight,
            config.pack_groups,
            config.reward_aggregation,
            config.uwo_coef,
            config.rollout_engine,
        )

    @property
    def packs_groups(self) -> bool:
        """Whether answers that share a prompt are measured as packed rows (then keep them together)."""
        return self.packing_weight is not None

    def autocast(self) -> Any:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Forward passes that only measure (sampling, log-probs, values, rewards): no grad, eval mode."""
        with torch.no_grad(), self.roles.inference(), self.autocast():
            yield

    def generate(self, prompts: Sequence[Any], reference: bool = False) -> Samples:
        """Sample responses (policy, or the SFT reference) through the rollout engine, cut at the first EOS.

        The engine is synced first, inside the reference context when sampling the reference, so it
        samples the model as it is at this call (the policy after the last update, or no adapter).
        """
        query, query_mask = engine.encode_prompts(self.tokenizer, list(prompts), self.device)
        with self.scoring(), self.roles.reference() if reference else nullcontext():
            self.engine.sync()
            rollout = self.engine.generate(query, query_mask, self.settings)
        texts = sampling.decode(self.tokenizer, rollout.tokens, self.eos_ids, self.tokenizer.pad_token_id)
        return Samples(
            list(prompts), query, query_mask, rollout.tokens, rollout.mask, texts, rollout.ended, rollout.logprobs
        )

    def response_hidden(self, samples: Samples) -> torch.Tensor:
        """The active role's last hidden states before each response token, B x R x H.

        Consecutive answers to the same prompt are packed, one row per prompt with the prompt once
        (:mod:`rlhf.ppo.packing`), when the model can take it and the estimated compute is lower;
        otherwise each answer is a row of prompt and answer, padded to the batch's widest.
        """
        if self.packing_weight is not None:
            runs = packing.prompt_runs(samples.query, samples.query_mask)
            if packing.packing_saves(runs, samples.query_mask, samples.mask, self.packing_weight):
                rows = packing.pack(
                    samples.query, samples.query_mask, samples.response, samples.mask, runs, self.tokenizer.pad_token_id
                )
                return packing.unpack(self.roles.hidden_states(rows.input_ids, rows.attention, rows.position_ids), rows)
        ids, mask = samples.sequences
        return self.roles.hidden_states(ids, mask)[:, samples.query.shape[1] - 1 : -1]

    def response_logits(self, samples: Samples, truncated: bool = True) -> torch.Tensor:
        """Logits predicting each response token (B x R x V), as the sampler draws from them.

        At the sampling temperature and, if ``truncated``, ``-inf`` outside the top-k / top-p set
        (the sampled token kept: :func:`rlhf.sampling.sampled_logits`). Divided in place: the
        vocabulary projection's backward does not need its output, and at a real vocabulary (152k) a
        second B x R x V tensor is hundreds of MiB.
        """
        logits = self.roles.token_logits(self.response_hidden(samples)).float()
        if self.settings.temperature != 1.0:
            logits.div_(self.settings.temperature)
        return sampling.sampled_logits(logits, self.settings, samples.response) if truncated else logits

    def response_logprobs(
        self, samples: Samples, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-prob of each response token (B x R) and, with ``with_entropy``, each position's entropy (no grad).

        Under the distribution the sampler draws from: temperature, then top-k / top-p, renormalised
        (:func:`rlhf.sampling.sampled_logits`), so PPO's ratio compares the policy with the sampler it
        was. The reference is measured the same way (its own top-k / top-p set, the sampled token always
        in it), so the KL is between the two samplers as configured, 0 while the policy is the reference.
        Through the vocabulary projection a chunk of positions at a time (:func:`~rlhf.ppo.logprobs.token_logprobs`):
        the B x R x V logits never exist at once, in the forward pass or the backward. A head that is not
        a plain linear layer (a LoRA on ``lm_head``) goes through :meth:`response_logits`.
        """
        head = self.roles.causal_lm.get_output_embeddings()
        if type(head) is torch.nn.Linear:
            return token_logprobs(self.response_hidden(samples), head, samples.response, self.settings, with_entropy)
        logits = self.response_logits(samples)
        with torch.no_grad():  # p log p outside a top-k / top-p set: 0 (xlogy), not exp(-inf) * -inf = NaN
            probs = logits.softmax(-1)
            entropy = -torch.special.xlogy(probs, probs).sum(-1) if with_entropy else None
        return selective_log_softmax(logits, samples.response), entropy

    def _per_token(self, samples: Samples, measure: Callable[[Samples], torch.Tensor]) -> torch.Tensor:
        """``measure`` (B x R of one batch) over length-grouped, trimmed batches, in the samples' order, 0 past EOS."""
        out = torch.zeros_like(samples.mask)
        runs = packing.prompt_runs(samples.query, samples.query_mask) if self.packs_groups else None
        for rows, batch in by_length(samples, self.forward_batch_size, runs):
            out[rows, : batch.response.shape[1]] = measure(batch).to(out.dtype)
        return out * samples.mask

    def logprobs(self, samples: Samples, reference: bool = False) -> torch.Tensor:
        """Log-prob of each sampled token under the policy (or the reference), B x R, 0 past EOS."""
        with self.scoring(), self.roles.reference() if reference else nullcontext():
            return self._per_token(samples, lambda b: self.response_logprobs(b)[0])

    def kl_to_reference(self, samples: Samples) -> torch.Tensor:
        """Exact KL(policy || reference) summed over each response's tokens (one value per answer).

        At every response position the full next-token distributions are compared (a sum over the
        vocabulary), so each term is >= 0; summed along the policy's own sampled answer this is an
        unbiased estimate of the sequence-level KL with far less variance than the sampled log-ratio,
        which goes negative on small evaluations. The models' distributions at the sampling
        temperature, without top-k / top-p: the reference's own top-p set may leave out tokens the
        policy keeps, where a KL between the truncated distributions would be infinite.
        """

        def per_token(batch: Samples) -> torch.Tensor:
            policy = torch.log_softmax(self.response_logits(batch, truncated=False), -1)
            with self.roles.reference():
                reference = torch.log_softmax(self.response_logits(batch, truncated=False), -1)
            return (policy.exp() * (policy - reference)).sum(-1).clamp_min(0)

        with self.scoring():
            return self._per_token(samples, per_token).sum(1)

    def values(self, samples: Samples) -> torch.Tensor:
        """The critic's value before each response token, B x R, 0 past EOS."""
        self.roles.use(VALUE)
        try:
            with self.scoring():
                return self._per_token(samples, lambda b: self.roles.values(self.response_hidden(b)))
        finally:
            self.roles.use(POLICY)

    def reward_scores(self, prompts: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """The reward model's score of prompt + response (B,), tokenized as the reward stage tokenized its pairs.

        For an ensemble, its members' standardised scores combined by ``reward_aggregation``.
        """
        return self.aggregate(self.member_scores(prompts, texts))

    def member_scores(self, prompts: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Each reward model's score of prompt + response (K x B): raw for one model, standardised for an ensemble."""
        sequences = [data.scoring_ids(self.tokenizer, p, t) for p, t in zip(prompts, texts, strict=True)]
        return self.score_token_ids(sequences)

    def aggregate(self, members: torch.Tensor) -> torch.Tensor:
        """One score per answer (B,) from :meth:`member_scores` (K x B), as ``reward_aggregation`` says."""
        return ensemble.aggregate(members, self.reward_aggregation, self.uwo_coef)

    def score_token_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Each reward model's score of already tokenized sequences (K x B; right-padded in batches).

        An ensemble's members are put on one scale (:func:`rlhf.ensemble.standardise`); one reward
        model's scores are its own (its scale is the identity).
        """
        scores = []
        with self.scoring():
            for part in chunks(len(sequences), self.forward_batch_size):
                ids, mask = data.right_pad(sequences[part], self.tokenizer.pad_token_id)
                scores.append(self.roles.rewards(ids.to(self.device), mask.to(self.device)).float())
        return ensemble.standardise(torch.cat(scores, 1), self.roles.reward_members)

    def rewards(self, samples: Samples) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Every reward component's raw score of each answer (B,), by name (``"model"`` and each function's),
        and the reward models' own scores (K x B; None without a reward model)."""
        parts: dict[str, torch.Tensor] = {}
        members = None
        if self.roles.has_reward_model:
            members = self.member_scores(samples.prompts, samples.texts)
            parts[rewards.MODEL] = self.aggregate(members)
        if self.reward_functions is not None:
            ids = [r[: int(n)] for r, n in zip(samples.response.tolist(), samples.mask.sum(1).tolist(), strict=True)]
            for name, value in self.reward_functions(samples.prompts, samples.texts, ids).items():
                parts[name] = value.to(self.device)
        return parts, members

    def reward(self, samples: Samples) -> torch.Tensor:
        """The weighted sum of :meth:`rewards`: the training reward of each answer (B,)."""
        return rewards.total(self.rewards(samples)[0], self.reward_weights)

    def score(self, samples: Samples, reference: bool = True, policy: bool = True) -> Trajectory:
        """Every role's pass over the samples: log-probs (if ``policy``), the reference's (if ``reference``),
        values (if the base has a critic) and the reward's components."""
        parts, members = self.rewards(samples)
        return Trajectory(
            samples=samples,
            logprobs=self.logprobs(samples) if policy else None,
            ref_logprobs=self.logprobs(samples, reference=True) if reference else None,
            values=self.values(samples) if self.roles.has_critic else None,
            scores=rewards.total(parts, self.reward_weights),
            reward_parts=parts,
            members=members,
        )
