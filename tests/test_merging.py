"""Merging an adapter reproduces the model as trained, in full precision and on a 4-bit (QLoRA) base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from rlhf import merging, models
from rlhf.arguments import ModelArguments


def _args(**kwargs: object) -> ModelArguments:
    args = ModelArguments(**{"model_name_or_path": "builtin:tiny", "lora_r": 4, "lora_alpha": 8, **kwargs})
    models.resolve_dtypes(args)
    return args


def _trained_adapter(args: ModelArguments, tokenizer, folder: Path) -> Path:
    """A non-zero adapter on the base loaded as `args` says (as after training); the same one every time."""
    torch.manual_seed(0)  # lora_A's initialisation draws from the global generator
    model = get_peft_model(models.load_causal_lm(args, tokenizer), models.lora_config(args, "CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_merge_reproduces_the_trained_model(quantization: str, tmp_path: Path, tiny_tokenizer) -> None:
    args = _args(quantization=quantization)
    adapter = _trained_adapter(args, tiny_tokenizer, tmp_path / "adapter")
    check = merging.merge_and_verify(args, adapter, tmp_path / "merged")
    assert check.kl_vs_trained < 1e-4, check  # the limit; measured ~1e-8
    assert check.argmax_agreement == 1.0
    assert check.max_logit_diff_vs_base > 0.1  # the adapter changed the model, and the merge kept the change
    assert check.merge_base == ("dequantized" if quantization == "4bit" else "original")
    assert (check.kl_requantized is None) == (quantization == "none")
    record = json.loads((tmp_path / "merged" / merging.MERGE_FILE).read_text())
    assert record["check"]["kl_vs_trained"] == check.kl_vs_trained

    # and independently of the check's own code: the saved model's logits are the trained model's
    ids = torch.tensor([[300, 202, 350, 260, 287, 40, 41]])
    trained = PeftModel.from_pretrained(models.load_causal_lm(args, tiny_tokenizer), str(adapter)).eval()
    merged = models.load_causal_lm(_args(model_name_or_path=str(tmp_path / "merged")), tiny_tokenizer).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained(ids).logits, atol=1e-3)


def test_merging_a_qlora_adapter_into_the_original_weights_is_another_model(tmp_path: Path, tiny_tokenizer) -> None:
    """The defect the default avoids: the adapter learned on deq(q(W)); merged into W it is a different model."""
    args = _args(quantization="4bit")
    adapter = _trained_adapter(args, tiny_tokenizer, tmp_path / "adapter")
    original = merging.merge_and_verify(args, adapter, tmp_path / "original", merge_base="original")
    dequantized = merging.merge_and_verify(args, adapter, tmp_path / "dequantized")
    assert original.merge_base == "original" and dequantized.merge_base == "dequantized"
    # measured over 5 seeds: 0.013-0.027 nats per token into the original weights, 2e-8 into the dequantized ones
    assert original.kl_vs_trained > 1e-3 > 1e-4 > dequantized.kl_vs_trained, (original, dequantized)
