"""Merging's parts the mutation run (scripts/mutation.py) found unguarded, on tiny modules.

The dequantization on a 4-bit model whose linear layers have biases (Qwen2's q/k/v; the tiny model's
have none), and the KL the merge check reports, against values worked out by hand.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config

from rlhf import merging, models
from rlhf.config import ModelArguments

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2}
SMALL |= {"num_key_value_heads": 1, "vocab_size": 64}


def test_dequantized_layers_compute_what_the_4bit_ones_do_biases_included(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(Qwen2Config(**SMALL))
    with torch.no_grad():
        for module in base.modules():  # Qwen2 initialises its biases to 0: give them values to lose
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.5)
    base.save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, dtype=torch.float32)
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    biases = {name: m.bias.detach().clone() for name, m in quantized.items() if m.bias is not None}
    assert len(biases) == 3  # q, k and v projections
    ids = torch.tensor([[1, 5, 9, 13, 40]])
    # the 4-bit forward on another copy: on the CPU, bitsandbytes repacks a layer's 4-bit data for its
    # kernel at the first forward, after which dequantize_4bit no longer reads it (the merge dequantizes
    # a freshly loaded base, as here)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(ids).logits
        dequantized = merging._dequantized(model)
        got = dequantized(ids).logits
    assert torch.allclose(got, expected, atol=5e-3)  # bitsandbytes' CPU kernel rounds differently
    # a bf16 run's base keeps its embeddings and norms in bf16: the merge base is float32 throughout
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, dtype=torch.bfloat16)
    assert {p.dtype for p in merging._dequantized(bf16).parameters()} == {torch.float32}
    for name in quantized:
        linear = dequantized.get_submodule(name)
        assert type(linear) is nn.Linear and linear.weight.dtype == torch.float32
        assert not any(p.requires_grad for p in linear.parameters())  # a merge base, not a model to train
        if name in biases:
            assert torch.equal(linear.bias, biases[name].float())


def test_kl_between_next_token_distributions_by_hand() -> None:
    # two positions over two tokens; the second is padding. Reference p = (.5, .5), other q = (.25, .75):
    # KL(p || q) = .5 log(.5 / .25) + .5 log(.5 / .75) = .5 log 2 + .5 log(2 / 3)
    reference = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    other = torch.log(torch.tensor([[[0.25, 0.75], [0.1, 0.9]]]))
    mean, largest = merging._kl(reference, other, torch.tensor([[1, 0]]))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert (mean, largest) == (pytest.approx(expected), pytest.approx(expected))
    # identical distributions: 0, never a rounding-negative value
    assert merging._kl(reference, reference.clone(), torch.tensor([[1, 1]])) == (0.0, 0.0)


def _args(quantization: str) -> ModelArguments:
    args = ModelArguments(model_name_or_path="builtin:tiny", quantization=quantization)
    models.resolve_dtypes(args)
    return args


def test_merge_base_choice_warning_and_errors(tiny_tokenizer, caplog) -> None:
    """An 8-bit base has no plain dequantized form: its original weights, with a warning; nothing else warns."""
    with caplog.at_level(logging.WARNING, logger="rlhf.merging"):
        assert merging.merge_base_model(_args("none"), tiny_tokenizer)[1] == "original"  # the default: dequantized
        assert merging.merge_base_model(_args("8bit"), tiny_tokenizer, "original")[1] == "original"
        assert caplog.records == []
        assert merging.merge_base_model(_args("8bit"), tiny_tokenizer, "dequantized")[1] == "original"
    assert [r.getMessage() for r in caplog.records] == [
        "8-bit base: merging into the original weights (LLM.int8 has no plain dequantized form)"
    ]
    with pytest.raises(ValueError, match=r"^merge_base must be one of \('dequantized', 'original'\), got 'other'$"):
        merging.merge_base_model(_args("none"), tiny_tokenizer, "other")


def test_merge_adapter_defaults_and_what_it_records(tmp_path: Path, tiny_tokenizer) -> None:
    """Float32 into the original weights of an unquantized base by default, as safetensors, with a merge.json
    naming base, quantization, merge base, adapter and dtype; ``dtype`` sets the saved weights' precision."""
    from safetensors import safe_open
    from test_merging import _trained_adapter

    args = _args("none")
    adapter = _trained_adapter(args, tiny_tokenizer, tmp_path / "adapter")
    out = merging.merge_adapter(args, adapter, tmp_path / "merged")
    record = json.loads((out / merging.MERGE_FILE).read_text())
    assert record == {
        "base": "builtin:tiny",
        "base_quantization": "none",
        "merge_base": "original",
        "adapter": str(adapter),
        "dtype": "float32",
    }
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    half = merging.merge_adapter(args, adapter, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(half / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}  # noqa: SIM118


def test_the_merge_check_reports_each_difference_by_name(tmp_path: Path, tiny_tokenizer, caplog) -> None:
    """A zero adapter (LoRA's B starts at 0): the merged model is the base, so the check sees no difference
    anywhere: trained vs base exactly 0 (so merge_and_verify warns that the adapter changes nothing), merged vs
    trained within float rounding, over every real token of the probes."""
    from peft import get_peft_model

    args = _args("none")
    model = get_peft_model(models.load_causal_lm(args, tiny_tokenizer), models.lora_config(args, "CAUSAL_LM"))
    model.save_pretrained(tmp_path / "zero")
    tiny_tokenizer.save_pretrained(tmp_path / "zero")
    with caplog.at_level(logging.WARNING, logger="rlhf.merging"):
        check = merging.merge_and_verify(args, tmp_path / "zero", tmp_path / "merged")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'zero'}: the adapter does not change the model (all LoRA updates are zero)"
    ]
    assert check.tokens == int(merging._probe_batch(tiny_tokenizer)[1].sum())
    assert check.max_logit_diff_vs_base == 0.0
    assert 0.0 <= check.kl_vs_trained <= check.max_kl_vs_trained < 1e-6
    assert check.max_logit_diff_vs_trained < 1e-4
    # a merge expected to be exact (unquantized base) whose KL exceeds the limit is refused, not logged
    with pytest.raises(RuntimeError, match=r"per token \(limit -1e\+00; .*the merge does not reproduce base\+adapter$"):
        merging.merge_and_verify(args, tmp_path / "zero", tmp_path / "strict", max_kl=-1.0)
