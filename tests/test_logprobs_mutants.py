"""The chunked log-prob projection's promises the mutation run (scripts/mutation.py) found unguarded.

fp32 results and fp32 gradient accumulation for a 16-bit head, the temperature in the backward
pass, chunks that never exceed ``chunk_elements`` logits, and a backward pass that recomputes the
logits exactly as the forward pass computed them under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlhf.policy import logprobs
from rlhf.policy.logprobs import token_logprobs
from rlhf.policy.sampling import SamplingSettings

V, H = 40, 16


def _head(dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(H, V, bias=True).to(dtype)


def test_temperature_two_in_the_forward_and_the_backward_pass() -> None:
    head = _head()
    hidden = torch.randn(2, 5, H, requires_grad=True)
    tokens = torch.randint(0, V, (2, 5))
    got, _ = token_logprobs(hidden, head, tokens, SamplingSettings(5, temperature=2.0), chunk_elements=3 * V)
    (got_grad,) = torch.autograd.grad(got.sum(), hidden)
    expected = torch.log_softmax(head(hidden) / 2.0, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6)


def test_a_16_bit_head_gives_fp32_logprobs_and_gradients_accumulated_in_fp32() -> None:
    """A bf16 head (bf16 or fp32 hidden states, no autocast): log-probs and entropy in fp32, with the
    log-sum-exp kept in fp32, and the head's gradient summed over chunks in fp32 and rounded once, so
    one position per chunk gives the same gradient as a single chunk (bf16 sums would differ by ulps)."""
    tokens = torch.randint(0, V, (64,), generator=torch.Generator().manual_seed(1))
    for hidden_dtype in (torch.bfloat16, torch.float32):
        grads = []
        for chunk_elements in (V, 1 << 24):  # one position per chunk; one chunk
            head = _head(torch.bfloat16)
            hidden = torch.randn(64, H, generator=torch.Generator().manual_seed(2)).to(hidden_dtype).requires_grad_()
            got, entropy = token_logprobs(hidden, head, tokens, SamplingSettings(4), True, chunk_elements)
            assert got.dtype == torch.float32 and entropy is not None and entropy.dtype == torch.float32
            logits = F.linear(hidden.to(torch.bfloat16), head.weight, head.bias).float()
            expected = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
            assert torch.allclose(got, expected, atol=1e-5)
            got.sum().backward()
            assert hidden.grad is not None and hidden.grad.dtype == hidden_dtype
            grads.append((head.weight.grad.float(), head.bias.grad.float()))
        for chunked, whole in zip(*grads, strict=True):
            assert torch.allclose(chunked, whole, rtol=2**-8, atol=1e-3)


def test_chunks_never_hold_more_than_chunk_elements_logits(monkeypatch) -> None:
    """The memory bound: at most ``chunk_elements // V`` positions per projection (at least one), both passes."""
    rows: list[int] = []
    linear = F.linear

    def counting(x: torch.Tensor, *args: object) -> torch.Tensor:
        rows.append(x.shape[0])
        return linear(x, *args)

    monkeypatch.setattr(logprobs.F, "linear", counting)
    head = _head()
    hidden = torch.randn(10, H, requires_grad=True)
    tokens = torch.randint(0, V, (10,))
    for chunk_elements, most in ((3 * V, 3), (V // 2, 1)):  # 3 positions; fewer logits than one position: 1
        rows.clear()
        got, _ = token_logprobs(hidden, head, tokens, SamplingSettings(4), chunk_elements=chunk_elements)
        got.sum().backward()
        assert max(rows) == most and sum(rows) == 2 * 10  # every position once in each pass


def test_the_backward_pass_recomputes_the_logits_at_the_forward_passs_precision() -> None:
    """Under autocast the logits are 16-bit; the backward's softmax must come from the same logits as the
    forward's log-sum-exp, so each position's gradient with respect to its logits, onehot - softmax,
    sums to 0 over the vocabulary: the bias gradient sums to 0 (recomputed at another precision, the
    softmax no longer sums to 1: off by ~1e-2 with bf16 against fp32, ~4e-4 with fp16 against fp32)."""
    for dtype in (torch.bfloat16, torch.float16):
        head = _head()
        hidden = torch.randn(3, 5, H, generator=torch.Generator().manual_seed(3)) * 3
        tokens = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(4))
        with torch.autocast("cpu", dtype=dtype):
            got, _ = token_logprobs(hidden, head, tokens, SamplingSettings(5), chunk_elements=4 * V)
        got.sum().backward()
        assert abs(head.bias.grad.sum().item()) < 1e-5, dtype
