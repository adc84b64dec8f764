"""Merging's parts the mutation run (scripts/mutation.py) found unguarded, on tiny modules.

The dequantization on a 4-bit model whose linear layers have biases (Qwen2's q/k/v; the tiny model's
have none), the KL the merge check reports, against values worked out by hand, the base loaded at the
pinned revision and in float32 from a 16-bit checkpoint, and the verdict (limit, refusal or warning)
for each kind of merge.
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
from rlhf.arguments import ModelArguments
from rlhf.results import MergeCheck

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


def test_the_original_base_is_the_pinned_revision_in_float32(tmp_path: Path, tiny_tokenizer, monkeypatch) -> None:
    """A hub id with ``model_revision``: the merge base is that revision (not the default branch), loaded in
    float32 although the checkpoint is bf16 (a merge into 16-bit weights would round the adapter's update)."""
    import huggingface_hub.constants

    builtin = models.resolve_model_path("builtin:tiny")
    snapshots = tmp_path / "hub" / "models--org--tiny" / "snapshots"
    embeddings = {}
    for revision, scale in (("a" * 40, 1.0), ("b" * 40, 2.0)):  # an offline hub cache with two revisions
        model = AutoModelForCausalLM.from_pretrained(builtin, dtype=torch.float32)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(scale)
        model.to(torch.bfloat16).save_pretrained(snapshots / revision)
        embeddings[revision] = model.get_input_embeddings().weight.float()
    (snapshots.parent / "refs").mkdir()
    (snapshots.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for revision, expected in ((None, "a" * 40), ("b" * 40, "b" * 40)):
        args = ModelArguments(model_name_or_path="org/tiny", model_revision=revision, quantization="none")
        models.resolve_dtypes(args)
        base, used = merging.merge_base_model(args, tiny_tokenizer, "original")
        assert used == "original"
        assert {p.dtype for p in base.parameters()} == {torch.float32}
        assert torch.equal(base.get_input_embeddings().weight, embeddings[expected])


def test_the_check_compares_a_16bit_merge_computed_in_float32(tmp_path: Path, tiny_tokenizer) -> None:
    """A bf16 merge is reloaded in float32 for the check: its differences from the model as trained are
    those of its rounded weights (recomputed here), not of bf16 arithmetic on top."""
    from peft import PeftModel
    from test_merging import _trained_adapter

    args = _args("none")
    adapter = _trained_adapter(args, tiny_tokenizer, tmp_path / "adapter")
    merged = merging.merge_adapter(args, adapter, tmp_path / "merged", dtype="bfloat16")
    check = merging.verify_merge(args, adapter, merged, "original")
    ids, mask = merging._probe_batch(tiny_tokenizer)
    trained = PeftModel.from_pretrained(models.load_causal_lm(args, tiny_tokenizer), str(adapter)).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = (
            trained(input_ids=ids, attention_mask=mask).logits,
            reloaded(input_ids=ids, attention_mask=mask).logits,
        )
    real = mask.bool()
    assert check.max_logit_diff_vs_trained == pytest.approx(float((got - expected)[real].abs().max()), rel=1e-5)
    assert check.kl_vs_trained == pytest.approx(merging._kl(expected, got, mask)[0], rel=1e-5)


def _verdict(monkeypatch, tmp_path: Path, args: ModelArguments, kl: float, used: str, **kwargs: object) -> MergeCheck:
    """merge_and_verify's decision alone: the merge records ``used`` as its base, the check measures ``kl``."""

    def merge(model_args, adapter_dir, output_dir, dtype="float32", merge_base="dequantized"):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / merging.MERGE_FILE).write_text(json.dumps({"merge_base": used}))

    check = MergeCheck(used, 10, kl, 2 * kl, 0.95, 0.5, 1.0, None)
    monkeypatch.setattr(merging, "merge_adapter", merge)
    monkeypatch.setattr(merging, "verify_merge", lambda *_: check)
    return merging.merge_and_verify(args, tmp_path / "adapter", tmp_path / "merged", **kwargs)


def test_the_merge_verdict_limits_refusals_and_warnings(tmp_path: Path, monkeypatch, caplog) -> None:
    """Default limits: 1e-4 nats per token for a float32 merge of a float32 model, 1e-2 when the merge or the
    model as trained computes in 16 bits, ``max_kl`` when given; a KL at the limit passes. Over it, a merge
    expected to be exact (unquantized base, or into the dequantized weights) is refused; a merge into the
    original weights of a quantized base is logged."""
    out = tmp_path / "merged"
    bf16_compute = ModelArguments(
        model_name_or_path="builtin:tiny", quantization="4bit", bnb_4bit_compute_dtype="bfloat16"
    )
    models.resolve_dtypes(bf16_compute)
    cases = [  # args, merge base used, merge dtype, max_kl, its limit
        (_args("none"), "original", "float32", None, "1e-04", 1e-4),
        (_args("4bit"), "dequantized", "float32", None, "1e-04", 1e-4),
        (_args("none"), "original", "bfloat16", None, "1e-02", 1e-2),
        (bf16_compute, "dequantized", "float32", None, "1e-02", 1e-2),
        (_args("none"), "original", "float32", 0.5, "5e-01", 0.5),
    ]
    for args, used, dtype, max_kl, shown, limit in cases:
        kwargs = {"dtype": dtype, "max_kl": max_kl}
        assert _verdict(monkeypatch, tmp_path, args, limit, used, **kwargs).kl_vs_trained == limit  # at the limit
        over = limit * 1.01
        refusal = (
            f"merged model {out} differs from the model as trained by KL {over:.2e} per token "
            f"(limit {shown}; greedy agreement 95.0%): the merge does not reproduce base+adapter"
        )
        with pytest.raises(RuntimeError) as error:
            _verdict(monkeypatch, tmp_path, args, over, used, **kwargs)
        assert str(error.value) == refusal
    with caplog.at_level(logging.WARNING, logger="rlhf.merging"):
        check = _verdict(monkeypatch, tmp_path, _args("4bit"), 0.02, "original")
    assert check.kl_vs_trained == 0.02
    assert [r.getMessage() for r in caplog.records] == [
        f"merged model {out} differs from the model as trained by KL 2.00e-02 per token "
        "(limit 1e-04; greedy agreement 95.0%): merge_base original on a 4bit base"
    ]
