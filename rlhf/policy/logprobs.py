"""Log-probs of chosen tokens through the vocabulary projection, a chunk of positions at a time.

Online RL needs, at every response position, the log-prob of the sampled token, which takes a
softmax over the whole vocabulary. Computed the usual way (``lm_head(hidden)``, then a log-softmax
and a gather) the B x R x V logits exist at once and stay alive for the backward pass, with a
gradient of the same size beside them: at a real vocabulary (Qwen2.5's 151,936 entries) that is
78 MiB for 4 answers of 32 tokens in fp32 and gigabytes for a real rollout, the largest tensor of
the step. :func:`token_logprobs` projects ``chunk_elements`` logits at a time, keeps only each
position's log-sum-exp for the backward pass, and there recomputes a chunk's logits to form its
gradient: peak memory of one chunk, for one more vocabulary projection in the backward pass (the
same trade as Liger-Kernel's fused linear cross-entropy, in plain PyTorch so it also runs on CPU).

Shapes: ``N`` positions (flattened), ``H`` hidden size, ``V`` vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rlhf.policy.sampling import SamplingSettings, sampled_logits

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MiB in fp32, about 110 positions of a 152k vocabulary


def _spans(n: int, vocabulary: int, chunk_elements: int) -> list[tuple[int, int]]:
    size = max(1, chunk_elements // vocabulary)
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    settings: SamplingSettings,
    tokens: torch.Tensor,
) -> torch.Tensor:
    """One chunk's logits in fp32 as the sampler draws from them (the projection in the weight's dtype).

    At the sampling temperature, and ``-inf`` outside the top-k / top-p set (the drawn token kept):
    :func:`rlhf.policy.sampling.sampled_logits`.
    """
    logits = F.linear(hidden.to(weight.dtype), weight, bias).float()
    if settings.temperature != 1.0:
        logits.div_(settings.temperature)
    return sampled_logits(logits, settings, tokens)


class _TokenLogprobs(torch.autograd.Function):
    """Forward: log-prob of ``tokens`` (and, without gradient, the entropy) by chunks; backward: recomputed."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # N x H
        weight: torch.Tensor,  # V x H
        bias: torch.Tensor | None,  # V
        tokens: torch.Tensor,  # N long
        settings: SamplingSettings,
        chunk_elements: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        logprobs = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_zeros(n if with_entropy else 0, dtype=torch.float32)
        for start, end in _spans(n, weight.shape[0], chunk_elements):
            logits = _logits(hidden[start:end], weight, bias, settings, tokens[start:end])
            lse[start:end] = torch.logsumexp(logits, -1)
            logprobs[start:end] = logits.gather(-1, tokens[start:end, None]).squeeze(-1) - lse[start:end]
            if with_entropy:  # -sum(p log p), from the log-probs (lse - sum(p * logits) cancels when H is small)
                logp = logits.sub_(lse[start:end, None])
                p = logp.exp()  # 0 outside a top-k / top-p set, where log p is -inf
                entropy[start:end] = -p.mul_(logp.nan_to_num_(neginf=0.0)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.settings, ctx.chunk_elements = settings, chunk_elements
        # the backward pass recomputes the logits as the forward pass computed them (mixed precision too)
        ctx.device = device = hidden.device.type
        ctx.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        temperature = ctx.settings.temperature
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        for start, end in _spans(hidden.shape[0], weight.shape[0], ctx.chunk_elements):
            g = grad_logprobs[start:end].float()
            # d logprob / d logits = (onehot(token) - softmax) / temperature, times the incoming gradient;
            # the softmax over the kept tokens only (exp(-inf) = 0 outside a top-k / top-p set)
            with torch.autocast(ctx.device, dtype=ctx.autocast, enabled=ctx.autocast is not None):
                logits = _logits(hidden[start:end], weight, bias, ctx.settings, tokens[start:end])
            grad = logits.sub_(lse[start:end, None]).exp_()
            grad.mul_(-g[:, None])
            grad[torch.arange(end - start, device=grad.device), tokens[start:end]] += g
            if temperature != 1.0:
                grad.div_(temperature)
            grad = grad.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = (grad @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad.t().float() @ hidden[start:end].float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    tokens: torch.Tensor,
    settings: SamplingSettings,
    with_entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each of ``tokens`` under the distribution the sampler draws from (``...`` x H, ``...`` -> ``...``).

    That is ``head(hidden) / temperature``, cut to the top-k / top-p set when ``settings`` set them
    (:func:`rlhf.policy.sampling.sampled_logits`), renormalised. Returns the log-probs (fp32,
    differentiable with respect to ``hidden`` and, if it trains, the head) and, with ``with_entropy``,
    the entropy of each position's distribution (fp32, no gradient; a metric), else None. Equal to
    ``log_softmax(sampled_logits(head(hidden) / temperature)).gather(tokens)`` and its gradient,
    without materialising the ``...`` x V logits.
    """
    shape = tokens.shape
    flat = hidden.reshape(-1, hidden.shape[-1])
    logprobs, entropy = _TokenLogprobs.apply(  # type: ignore[no-untyped-call]  # torch leaves apply untyped
        flat, head.weight, head.bias, tokens.reshape(-1), settings, chunk_elements, with_entropy
    )
    return logprobs.view(shape), entropy.view(shape) if with_entropy else None
