"""Packing's cost model against hand-computed values (the mutation run, scripts/mutation.py, found it unpinned)."""

from __future__ import annotations

import pytest
import torch

from rlhf.policy import packing


def test_attention_weight_by_hand_and_its_default_intermediate_size() -> None:
    # 2 / (4 d + 3 i): d 8, i 20 -> 2 / 92; without an intermediate size, i = 4 d = 32 -> 2 / 128
    assert packing.attention_weight(8, 20) == pytest.approx(2 / 92)
    assert packing.attention_weight(8, None) == pytest.approx(2 / 128)


@pytest.mark.parametrize(("weight", "saves"), [(0.5, True), (0.99, True), (1.0, False), (1.01, False), (1.5, False)])
def test_packing_saves_weighs_linear_and_attention_cost_by_hand(weight: float, saves: bool) -> None:
    """Two one-token answers to a one-token prompt: padded 2 rows of 2 tokens, packed 1 row of 3.

    Cost of a row of L tokens: L * (1 + w * L). Padded 2 * 2 * (1 + 2w) = 4 + 8w; packed 3 * (1 + 3w)
    = 3 + 9w: packing is cheaper exactly when w < 1 (at w = 1 both cost 12: no packing).
    """
    ones = torch.ones(2, 1, dtype=torch.long)
    assert packing.packing_saves([2], ones, ones, weight) is saves


def test_packing_saves_reads_each_runs_own_answers() -> None:
    """Three runs of two answers to one-token prompts; the third run's answers are 3 tokens, the others 1.

    Rows 1 + 2, 1 + 2 and 1 + 6 tokens: packed 3 rows of 7, 3 * 7 * (1 + 7w) = 21 + 147w; padded 6 rows of
    1 + 3: 6 * 4 * (1 + 4w) = 24 + 96w. At w = .1: 35.7 > 33.6, no packing (had the third run been read as
    1-token answers: 3 * 3 * 1.3 = 11.7, packing).
    """
    query_mask = torch.ones(6, 1, dtype=torch.long)
    mask = torch.tensor([[1, 0, 0]] * 4 + [[1, 1, 1]] * 2)
    assert not packing.packing_saves([2, 2, 2], query_mask, mask, 0.1)
    assert packing.packing_saves([2, 2, 2], query_mask, mask, 0.01)  # 21 + 1.47 < 24 + .96
    assert not packing.packing_saves([], query_mask[:0], mask[:0], 0.1)  # nothing to pack


def test_three_runs_pack_into_three_rows_padded_with_the_pad_id() -> None:
    # prompts [5], [6], [7 8]; answers 1, 2 / 3 / 4, 4 (lengths 1, 1 / 2 / 1, 1); pad id 99
    query = torch.tensor([[0, 5], [0, 5], [0, 6], [7, 8], [7, 8]])
    query_mask = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 1], [1, 1]])
    response = torch.tensor([[1, 0], [2, 0], [3, 3], [4, 0], [4, 0]])
    mask = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 0], [1, 0]])
    packed = packing.pack(query, query_mask, response, mask, [2, 1, 2], pad_token_id=99)
    assert packed.input_ids.tolist() == [[5, 1, 2, 99], [6, 3, 3, 99], [7, 8, 4, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 1, 0], [0, 1, 2, 0], [0, 1, 2, 2]]
