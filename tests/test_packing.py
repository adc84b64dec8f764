"""Packing answers that share a prompt (rlhf.policy.packing): layout, mask, cost model, which models can pack.

That a packed row measures what padded rows measure, on a real model, is in test_ppo.py
(test_packed_groups_measure_what_padded_rows_measure).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from rlhf.policy import packing
from rlhf.policy.roles import SharedBase
from rlhf.policy.sampler import Samples, by_length

PAD = 0


def _group() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows 0-1 answer prompt [5, 6] (left-padded), row 2 answers [7, 8, 9]; answers of 2, 3 and 2 tokens."""
    query = torch.tensor([[PAD, 5, 6], [PAD, 5, 6], [7, 8, 9]])
    query_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1]])
    response = torch.tensor([[10, 2, PAD], [11, 12, 2], [13, 2, PAD]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return query, query_mask, response, mask


def test_prompt_runs_are_consecutive_rows_with_the_same_prompt() -> None:
    query, query_mask, _, _ = _group()
    assert packing.prompt_runs(query, query_mask) == [2, 1]
    again = torch.cat([query, query[:1]])  # the same prompt after another one is a new run
    assert packing.prompt_runs(again, torch.cat([query_mask, query_mask[:1]])) == [2, 1, 1]
    shifted = query_mask.clone()
    shifted[1, 0] = 1  # same ids, different padding: not the same prompt
    assert packing.prompt_runs(query, shifted) == [1, 1, 1]
    assert packing.prompt_runs(query[:0], query_mask[:0]) == []


def test_a_packed_row_holds_the_prompt_once_then_each_answer_at_its_own_positions() -> None:
    packed = packing.pack(*_group(), runs=[2, 1], pad_token_id=PAD)
    assert packed.input_ids.tolist() == [[5, 6, 10, 2, 11, 12, 2], [7, 8, 9, 13, 2, PAD, PAD]]
    # each answer continues from the prompt's length, as in its own padded row
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 3, 4, 0, 0]]
    # the hidden state predicting each answer token: the prompt's last token, then the answer's previous
    # one (row * 7 + column); answer padding points at the prompt's last token
    assert packed.source.tolist() == [[1, 2, 1], [1, 4, 5], [9, 10, 9]]
    allowed = packed.attention[:, 0]
    assert allowed.shape == (2, 7, 7)
    first, second = allowed[0], allowed[1]
    # the prompt is causal; answer 1 sees the prompt and itself
    assert first[1].tolist() == [True, True, False, False, False, False, False]
    assert first[3].tolist() == [True, True, True, True, False, False, False]
    # answer 2 sees the prompt and its own tokens, never answer 1
    assert first[4].tolist() == [True, True, False, False, True, False, False]
    assert first[6].tolist() == [True, True, False, False, True, True, True]
    # a lone answer behaves like a plain causal row; the row's end padding sees only itself
    assert second[4].tolist() == [True, True, True, True, True, False, False]
    assert second[5].tolist() == [False, False, False, False, False, True, False]


def test_unpack_reads_the_hidden_state_that_predicts_each_answer_token() -> None:
    packed = packing.pack(*_group(), runs=[2, 1], pad_token_id=PAD)
    hidden = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7, 1)  # each position holds its flat index
    assert packing.unpack(hidden, packed)[..., 0].tolist() == [[1, 2, 1], [1, 4, 5], [9, 10, 9]]


def test_runs_that_do_not_cover_the_rows_are_an_error() -> None:
    with pytest.raises(ValueError, match="do not cover"):
        packing.pack(*_group(), runs=[2], pad_token_id=PAD)


def test_packing_is_chosen_when_it_costs_less_compute() -> None:
    """Short answers to long prompts pack; long answers in a big group (attention-bound) or single answers do not."""
    weight = packing.attention_weight(hidden_size=896, intermediate_size=4864)  # Qwen2.5-0.5B's shape

    def batch(prompt: int, answers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        query_mask = torch.ones(len(answers), prompt)
        width = max(answers)
        mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in answers])
        return query_mask, mask

    short = batch(100, [50] * 8)  # padded 8 x 150 tokens; packed 1 x 500
    assert packing.packing_saves([8], *short, weight)
    long = batch(100, [500] * 8)  # padded 8 x 600; packed 1 x 4100 attends over 4100^2 pairs
    assert not packing.packing_saves([8], *long, weight)
    assert not packing.packing_saves([1] * 8, *short, weight)  # nothing shared
    no_prompt = (torch.zeros(8, 3), short[1])
    assert not packing.packing_saves([8], *no_prompt, weight)


def _base(config: LlamaConfig | MistralConfig | Qwen2Config, attention: str = "sdpa") -> SharedBase:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    return SharedBase(model, lora, reward_dir=None, value_init=None)


SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
SMALL |= {"num_key_value_heads": 1, "vocab_size": 50}


def test_models_whose_attention_takes_a_block_mask_can_pack() -> None:
    assert _base(LlamaConfig(**SMALL)).packing_weight == pytest.approx(2 / (4 * 32 + 3 * 64))
    assert _base(Qwen2Config(**SMALL)).packing_weight is not None  # Qwen2.5: no sliding window by default
    assert _base(LlamaConfig(**SMALL), attention="eager").packing_weight is not None


def test_sliding_windows_and_other_attention_kernels_do_not_pack() -> None:
    assert _base(MistralConfig(**SMALL, sliding_window=16)).packing_weight is None
    assert _base(Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=16)).packing_weight is None
    roles = _base(LlamaConfig(**SMALL))
    roles.causal_lm.config._attn_implementation = "flash_attention_2"  # its kernels take no 4-D mask
    assert roles.packing_weight is None


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_each_answer_the_hidden_states_of_its_padded_row(architecture: str, attention: str) -> None:
    """Through a real architecture (Llama; Qwen2: q/k/v biases, grouped KV heads): the same hidden states.

    Runs of 3 and 2 answers to left-padded prompts of 4 and 6 tokens, answers of 1 to 5 tokens, against
    the padded rows the sampler uses otherwise (positions from the attention mask).
    """
    config = (LlamaConfig if architecture == "llama" else Qwen2Config)(**SMALL)
    roles = _base(config, attention)
    roles.eval()
    torch.manual_seed(1)
    prompts = [torch.randint(4, 50, (4,)), torch.randint(4, 50, (6,))]
    lengths = [5, 1, 3, 4, 2]
    query = torch.zeros(5, 6, dtype=torch.long)
    query_mask = torch.zeros(5, 6, dtype=torch.long)
    for row, prompt in enumerate([prompts[0]] * 3 + [prompts[1]] * 2):
        query[row, 6 - len(prompt) :], query_mask[row, 6 - len(prompt) :] = prompt, 1
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    response = torch.randint(4, 50, (5, 5)) * mask.long()
    runs = packing.prompt_runs(query, query_mask)
    assert runs == [3, 2]
    packed = packing.pack(query, query_mask, response, mask, runs, pad_token_id=PAD)
    with torch.no_grad():
        hidden = packing.unpack(roles.hidden_states(packed.input_ids, packed.attention, packed.position_ids), packed)
        padded = roles.hidden_states(torch.cat([query, response], 1), torch.cat([query_mask, mask.long()], 1))
    padded = padded[:, query.shape[1] - 1 : -1]
    assert torch.allclose(hidden * mask[..., None], padded * mask[..., None], atol=1e-5)


def test_scoring_batches_keep_runs_together_and_never_exceed_their_size() -> None:
    """Runs of 3, 1, 6 and 2 answers in batches of at most 4 rows: a run stays whole unless longer than 4."""
    runs = [3, 1, 6, 2]
    rows = sum(runs)
    lengths = [2, 2, 2, 9, 1, 1, 1, 1, 1, 1, 5, 5]
    query = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs))[:, None] + 10
    mask = torch.tensor([[1.0] * n + [0.0] * (9 - n) for n in lengths])
    samples = Samples(
        prompts=list(range(rows)), query=query, query_mask=torch.ones_like(query), response=mask.long() + 4,
        mask=mask, texts=[""] * rows, ended=torch.ones(rows, dtype=torch.bool),
    )  # fmt: skip
    batches = [rows_.tolist() for rows_, _ in by_length(samples, 4, runs)]
    assert sorted(row for batch in batches for row in batch) == list(range(rows))
    assert all(len(batch) <= 4 for batch in batches)
    # the run of 6 (rows 4-9) in pieces of 4 and 2; every other run whole, in one batch
    pieces = [[row for row in batch if 4 <= row <= 9] for batch in batches]
    assert sorted(len(piece) for piece in pieces if piece) == [2, 4]
    for run in ([0, 1, 2], [3], [10, 11]):
        assert any(set(run) <= set(batch) for batch in batches)
    # shortest answers first: the 2-row piece of one-token answers (total 2) leads
    assert batches[0][:2] == [8, 9]
    # without runs: single rows sorted by answer length, as before packing
    assert [r for b, _ in by_length(samples, 4) for r in b.tolist()] == torch.argsort(
        torch.tensor(lengths), stable=True
    ).tolist()
