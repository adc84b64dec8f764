"""Sampling answers from a policy exactly as configured: nothing inherited, every EOS id honoured.

``model.generate()`` fills every setting a call leaves unset from the checkpoint's saved
``generation_config.json``. Qwen2.5-Instruct saves ``repetition_penalty`` 1.05-1.1, ``top_k`` 20
and ``top_p`` 0.8; so a PPO rollout that sets only temperature samples from a *different*
distribution than the policy whose log-probs it then recomputes (measured with 1.1: up to 0.054
nats per token apart), and the ratio and the KL are computed on the wrong samples. Here the
generation config is built from the caller's settings alone (everything else at transformers'
neutral global defaults) and the model's saved config is hidden for the duration of the call.

Models such as Llama 3 end a turn with one of several tokens (``<|eot_id|>``, ``<|end_of_text|>``,
...); :func:`eos_token_ids` collects every one the tokenizer and the generation config declare, and
:func:`cut_at_eos` stops a response at the first of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper


@dataclass(frozen=True)
class SamplingSettings:
    """What a sampler draws from: the distribution is ``softmax(logits / temperature)``, then top-k/top-p."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter

    @property
    def truncates(self) -> bool:
        """Whether top-k or top-p cut the distribution (then a token's log-prob is not a plain log-softmax)."""
        return self.top_k > 0 or self.top_p < 1.0


def sampled_logits(logits: torch.Tensor, settings: SamplingSettings, tokens: torch.Tensor) -> torch.Tensor:
    """``logits`` (... x V, already divided by the temperature) restricted to what the sampler draws from.

    generate() applies temperature, then top-k, then top-p (transformers' own warpers, used here so
    the cut is the same to the tie) and samples from the softmax of what is left; the log-prob of a
    sampled token is its logit minus the log-sum-exp over the kept tokens only, and its gradient is
    zero outside them. Every token outside the kept set becomes ``-inf``, except ``tokens`` (... long):
    a token that was drawn is always kept, so a recompute whose set differs at the boundary by a
    rounding, or a reference whose own top-p set excludes what the policy drew, gives a finite
    log-prob rather than ``-inf``. Without top-k/top-p the logits come back unchanged.
    """
    if not settings.truncates:
        return logits
    flat = logits.reshape(-1, logits.shape[-1])
    drawn = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, tokens.reshape(-1, 1), True)
    return torch.where(drawn, flat, truncate(flat, settings)).view_as(logits)


def truncate(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """``logits`` (N x V, divided by the temperature) with ``-inf`` outside the top-k, then top-p, set.

    generate()'s own warpers in generate()'s order, so a decode loop that draws from
    ``softmax(truncate(logits))`` draws from the distribution generate() draws from, to the tie.
    """
    if settings.top_k > 0:
        logits = TopKLogitsWarper(settings.top_k)(None, logits)
    if settings.top_p < 1.0:
        logits = TopPLogitsWarper(settings.top_p)(None, logits)
    return logits


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS and every EOS the generation config lists."""
    ids: list[int] = []
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, declared, getattr(model.config, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError("the tokenizer and the model declare no EOS token: answers could never end")
    return ids


def generation_config(settings: SamplingSettings, eos_ids: list[int], pad_token_id: int) -> GenerationConfig:
    """A complete generation config for ancestral sampling with ``settings``; every other knob neutral."""
    neutral = GenerationConfig._get_default_generation_params()
    return GenerationConfig(
        **{
            **neutral,
            "max_length": None,  # max_new_tokens bounds the answer
            "do_sample": True,
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k,
            "eos_token_id": eos_ids,
            "pad_token_id": pad_token_id,
            "use_cache": True,
        }
    )


def generative(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (whose ``generate`` it ends up calling)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


@contextmanager
def _no_saved_defaults(model: torch.nn.Module) -> Iterator[None]:
    """Hide the checkpoint's saved generation config, so generate() has nothing to fill unset values from."""
    inner = generative(model)
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def _generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: SamplingSettings,
    eos_ids: list[int],
    pad_token_id: int,
    with_scores: bool,
) -> Any:
    config = generation_config(settings, eos_ids, pad_token_id)
    config.output_scores = config.return_dict_in_generate = with_scores
    with _no_saved_defaults(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: SamplingSettings,
    eos_ids: list[int],
    pad_token_id: int,
) -> torch.Tensor:
    """New tokens only (B x up to ``max_new_tokens``) for left-padded prompts."""
    out = _generate(model, input_ids, attention_mask, settings, eos_ids, pad_token_id, with_scores=False)
    return out[:, input_ids.shape[1] :]


@torch.no_grad()
def sample_with_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: SamplingSettings,
    eos_ids: list[int],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample`, plus each sampled token's log-probability under the distribution it was drawn from.

    That is the logits after every processor generate() applied; it costs a batch x length x vocabulary
    tensor, so it is for checking a sampler, not for every rollout.
    """
    out = _generate(model, input_ids, attention_mask, settings, eos_ids, pad_token_id, with_scores=True)
    tokens = out.sequences[:, input_ids.shape[1] :]
    drawn_from = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)
    return tokens, drawn_from.gather(-1, tokens[..., None]).squeeze(-1)


def cut_at_eos(
    response: torch.Tensor, eos_ids: list[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS (any of ``eos_ids``).

    Returns ``(response, mask, ended)``: the response with padding after the EOS, a float mask that is
    1 up to and including the EOS, and whether each response stopped with one (B,).
    """
    is_eos = torch.isin(response, torch.tensor(eos_ids, device=response.device))
    ended = is_eos.any(1)
    length = response.shape[1]
    first_eos = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, length, dtype=torch.long))
    positions = torch.arange(length, device=response.device)
    mask = (positions[None, :] <= first_eos[:, None]).float()
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_token_id))
    return response, mask, ended


def decode(
    tokenizer: PreTrainedTokenizerBase, response: torch.Tensor, eos_ids: list[int], pad_token_id: int
) -> list[str]:
    """Response texts without EOS, padding or other special tokens, stripped."""
    eos = torch.isin(response, torch.tensor(eos_ids, device=response.device))
    texts = tokenizer.batch_decode(response.masked_fill(eos, pad_token_id), skip_special_tokens=True)
    return [text.strip() for text in texts]
