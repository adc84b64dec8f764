"""The one place that builds models: 4-bit loading, pad tokens, LoRA configs, local paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoTokenizer

from rlhf import models
from rlhf.arguments import ModelArguments
from rlhf.policy import loading
from rlhf.policy.config import ScoringConfig
from rlhf_core.errors import ConfigError


def _args(**kwargs: object) -> ModelArguments:
    args = ModelArguments(model_name_or_path="builtin:tiny", **kwargs)
    models.resolve_dtypes(args)
    return args


def test_builtin_model_resolves_and_unknown_builtin_is_named() -> None:
    assert Path(models.resolve_model_path("builtin:tiny"), "config.json").is_file()
    assert models.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ConfigError, match="unknown built-in model 'builtin:huge'"):
        models.resolve_model_path("builtin:huge")


def test_a_missing_local_model_names_the_stage_that_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rlhf reward` before `rlhf sft` says what to run, instead of a hub traceback about repo ids."""
    # a folder with the repository's recipes/ and no runs/ (the repository may hold the README's main job)
    (tmp_path / "recipes").symlink_to(models.BUILTIN_MODELS["builtin:tiny"].parents[2] / "recipes")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"runs/tiny/sft/merged: no such folder.*rlhf sft --config recipes/tiny"):
        models.resolve_model_path("runs/tiny/sft/merged")
    with pytest.raises(ConfigError, match="no such folder"):
        models.resolve_model_path(str(tmp_path / "nothing"))
    assert models.resolve_model_path("org/model") == "org/model"  # a hub id stays one
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())


def test_four_bit_nf4_with_double_quantization_loads_and_runs_on_cpu(tiny_tokenizer) -> None:
    import bitsandbytes as bnb

    args = _args(quantization="4bit")
    model = models.load_causal_lm(args, tiny_tokenizer)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # double quantization
    ids = tiny_tokenizer("What is 3 plus 4?", return_tensors="pt").input_ids
    full = models.load_causal_lm(_args(), tiny_tokenizer)
    with torch.no_grad():
        quantized_logits, full_logits = model(ids).logits, full(ids).logits
    assert torch.isfinite(quantized_logits).all()
    # 4-bit rounds the weights but keeps the model: the next-token choice mostly agrees
    agreement = (quantized_logits.argmax(-1) == full_logits.argmax(-1)).float().mean()
    assert agreement > 0.7


def test_four_bit_lora_gradients_survive_an_eval_mode_forward(tiny_tokenizer) -> None:
    """PPO samples in eval mode between updates: the 4-bit layers must still pass gradients after that.

    bitsandbytes would otherwise repack the weights for a CPU inference kernel without a backward (on
    CPUs with AVX512-BF16) and the first layer's LoRA would get a different, wrong gradient.
    """
    args = _args(quantization="4bit", lora_dropout=0.0)  # no dropout: the two gradients must be comparable
    model = get_peft_model(models.load_causal_lm(args, tiny_tokenizer), models.lora_config(args, "CAUSAL_LM"))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)  # B starts at zero; give every LoRA a path to earlier layers
    ids = tiny_tokenizer(["What is 3 plus 4? Sure! 3 plus 4 is 7."], return_tensors="pt").input_ids
    first = next(p for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n)

    def gradient() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return first.grad.clone()

    before = gradient()
    model.eval()
    with torch.no_grad():
        model(ids[:, :1])  # one token, eval mode, no grad: what generation does
    after = gradient()
    assert before.abs().sum() > 0
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-7)


def test_pad_token_is_made_distinct_from_eos(tmp_path: Path, tiny_tokenizer) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model_path("builtin:tiny"))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    fixed = models.load_tokenizer(
        ModelArguments(model_name_or_path="builtin:tiny", tokenizer_name_or_path=str(tmp_path))
    )
    assert fixed.pad_token_id != fixed.eos_token_id
    assert fixed.pad_token == "<|pad|>"  # a reserved pad token is reused: no new embedding row


def test_seq_cls_lora_trains_the_score_head_fully_and_puts_no_lora_on_it(tiny_tokenizer) -> None:
    args = _args(lora_r=4, lora_alpha=8)
    model = get_peft_model(models.load_reward_backbone(args, tiny_tokenizer), models.lora_config(args, "SEQ_CLS"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save" in n for n in trainable)
    assert not any("score" in n and "lora_" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable)


def test_the_policy_loader_puts_an_unquantized_base_on_this_process_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """PPO, eval and candidates load through one loader; a 4-bit base is placed as it loads, a float one must be
    moved (it stayed on the CPU of a GPU machine). "meta" stands in for the GPU this machine lacks."""
    monkeypatch.setattr(models, "process_device", lambda: torch.device("meta"))
    roles, _ = loading.load_roles(_args(quantization="none"), ScoringConfig(), None, seed=0)
    assert {p.device.type for p in roles.parameters()} == {"meta"}
