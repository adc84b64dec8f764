"""Answers that share a prompt go through the model as one row that holds the prompt once.

GRPO and RLOO sample ``num_generations`` answers per prompt, and every pass over them (the sampling
policy's log-probs, the reference's, each minibatch's forward, checkpoint recomputation and
backward) would otherwise run the prompt once per answer and pad every answer to the longest in its
batch. Packed, a group is one row ``[prompt, answer 1, answer 2, ...]`` with no padding inside; a
block mask lets each answer attend to the prompt and to its own earlier tokens only, and position
ids restart after the prompt for each answer, so every answer token sees exactly the keys, values
and positions it saw in its own padded row: the same log-probs, values and gradients, up to
floating-point summation order (tested against the padded path). On the tiny bench (prompts of
~19 tokens, answers of ~12, groups of 4; ``benchmarks/bench_rl.py``) an iteration's update took 0.43 s
instead of 0.75 and its two scoring passes 0.08 s instead of 0.19.

Packing pays in the linear layers (fewer tokens) and costs in attention (a row of ``L`` tokens
attends over ``L^2`` pairs, most of them masked), so :func:`packing_saves` compares both layouts'
estimated FLOPs; long answers in large groups stay padded. Only attention implementations that
take an arbitrary 4-D mask can pack (eager and SDPA; flash-attention's kernels take none), and
models with sliding-window layers never do (the window would have to be re-derived from positions).

Everything here is a pure function of token tensors. Shapes: ``B`` answers, ``P`` (left-padded)
prompt tokens, ``R`` answer tokens, ``N`` packed rows of ``L`` tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class PackedRows:
    """Groups of answers packed one group to a row, and where each answer token's prediction comes from."""

    input_ids: torch.Tensor  # N x L long: prompt once, then each answer without padding; pad at the end
    position_ids: torch.Tensor  # N x L long: the positions each token has in its own padded row
    attention: torch.Tensor  # N x 1 x L x L bool: True where a query token may attend to a key token
    source: torch.Tensor  # B x R long: flat index (row * L + column) of the hidden state predicting each answer token


def prompt_runs(query: torch.Tensor, query_mask: torch.Tensor) -> list[int]:
    """Sizes of the runs of consecutive rows with the same prompt (ids and mask), in order; they sum to B."""
    if len(query) == 0:
        return []
    same = (query[1:] == query[:-1]).all(1) & (query_mask[1:] == query_mask[:-1]).all(1)
    starts = [0, *(torch.nonzero(~same).flatten() + 1).tolist(), len(query)]
    return [b - a for a, b in itertools.pairwise(starts)]


def _row_cost(length: int, attention_weight: float) -> float:
    """Estimated FLOPs of a row of ``length`` tokens, in units of one token through the linear layers."""
    return length * (1.0 + attention_weight * length)


def attention_weight(hidden_size: int, intermediate_size: int | None) -> float:
    """A key position's attention FLOPs relative to a token's linear-layer FLOPs (per layer).

    Per token, the projections cost about ``2 * (4 d^2 + 3 d i)`` (q, k, v, o; gate, up, down) and
    attention ``4 d`` per key (scores and the weighted sum over values).
    """
    intermediate = intermediate_size or 4 * hidden_size
    return 2.0 / (4 * hidden_size + 3 * intermediate)


def packing_saves(runs: Sequence[int], query_mask: torch.Tensor, mask: torch.Tensor, weight: float) -> bool:
    """Whether packing these runs costs fewer estimated FLOPs than one padded row per answer.

    Padded: every row is as wide as the batch (``P + R`` after trimming). Packed: a row per run,
    all as wide as the longest run (prompt plus its answers).
    """
    prompts = query_mask.sum(1)
    if not runs or max(runs) < 2 or int(prompts.min()) == 0:  # an answer's first token needs a prompt token
        return False
    rows, width = mask.shape[0], query_mask.shape[1] + mask.shape[1]
    padded = rows * _row_cost(width, weight)
    answers = mask.sum(1)
    lengths, start = [], 0
    for size in runs:
        lengths.append(int(prompts[start]) + int(answers[start : start + size].sum()))
        start += size
    return len(runs) * _row_cost(max(lengths), weight) < padded


def pack(
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    mask: torch.Tensor,
    runs: Sequence[int],
    pad_token_id: int,
) -> PackedRows:
    """Pack each run of answers to one prompt into a row: ``[prompt, answer 1, ..., answer k]``.

    The prompt is the run's first row's real (unpadded) tokens; each answer keeps its tokens up to
    and including EOS (``mask``). An answer's first token is predicted by the prompt's last hidden
    state, its ``j``-th by its own ``(j-1)``-th; ``source`` points there (answer padding points at
    the prompt's last token: finite, and masked out by every consumer). Padding at a row's end
    attends to itself only, so no softmax row is empty.
    """
    if sum(runs) != len(query):
        raise ValueError(f"runs {list(runs)} do not cover the {len(query)} rows")
    width, lengths, device = response.shape[1], mask.sum(1).long().tolist(), query.device
    packed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # ids, segment (0 prompt, k answer k), position
    source = torch.zeros(len(query), width, dtype=torch.long, device=device)
    first = 0
    for size in runs:
        prompt = query[first][query_mask[first].bool()]
        p, start = len(prompt), len(prompt)
        ids, segment, position = [prompt], [torch.zeros_like(prompt)], [torch.arange(p, device=device)]
        for k, row in enumerate(range(first, first + size), start=1):
            n = lengths[row]
            ids.append(response[row, :n])
            segment.append(torch.full((n,), k, dtype=prompt.dtype, device=device))
            position.append(torch.arange(p, p + n, device=device))
            source[row] = p - 1
            source[row, 1:n] = torch.arange(start, start + n - 1, device=device)
            start += n
        packed.append((torch.cat(ids), torch.cat(segment), torch.cat(position)))
        first += size
    ids_rows, segment_rows, position_rows = zip(*packed, strict=True)
    input_ids = pad_sequence(list(ids_rows), batch_first=True, padding_value=pad_token_id)
    segments = pad_sequence(list(segment_rows), batch_first=True, padding_value=-1)
    positions = pad_sequence(list(position_rows), batch_first=True, padding_value=0)
    count, length = input_ids.shape
    columns = torch.arange(length, device=device)
    causal = columns[None, :] <= columns[:, None]  # query x key
    key, query_segment = segments[:, None, :], segments[:, :, None]
    real = (key >= 0) & (query_segment >= 0)
    attention = (causal & real & ((key == 0) | (key == query_segment))) | torch.eye(
        length, dtype=torch.bool, device=device
    )
    row_of = torch.repeat_interleave(torch.arange(count, device=device), torch.tensor(list(runs), device=device))
    return PackedRows(input_ids, positions, attention[:, None], source + row_of[:, None] * length)


def unpack(hidden: torch.Tensor, packed: PackedRows) -> torch.Tensor:
    """The hidden states predicting each answer token, B x R x H, from the packed rows' N x L x H."""
    return hidden.reshape(-1, hidden.shape[-1])[packed.source]
