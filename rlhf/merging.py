"""Merging a LoRA adapter into its base, and proving the merged model is the one that was trained.

A LoRA trained with QLoRA learned its update on top of the *4-bit* base weights, ``deq(q(W))``, not
on the original ``W``. Merging it into ``W`` gives another model: on the tiny PPO policy the two
differ by KL 0.012 per token, and 3.9% of greedy tokens change (the same effect is reported in
PEFT #2321, transformers #31293, axolotl #1263). So by default the adapter is merged into the
dequantized 4-bit weights, which reproduces the trained model to within float rounding
(``merge_base: dequantized``); ``merge_base: original`` keeps the merge into the original weights
for users who want the full-precision base back, at the cost the verification reports.

:func:`verify_merge` compares the merged checkpoint, reloaded from disk, with the model *as trained*
(the base loaded exactly as the training stage loaded it, plus the adapter): mean and max KL per
token, greedy-token agreement and the largest logit difference. It also reports how far the merged
model moves when it is quantized again, as the next stage (reward, PPO) loads it.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from rlhf import data, models
from rlhf.arguments import ModelArguments
from rlhf.policy import sampling
from rlhf.results import FullPrecisionLoad, MergeCheck

logger = logging.getLogger(__name__)

MERGE_BASES = ("dequantized", "original")
MERGE_FILE = "merge.json"

# Probe conversations for the verification: chat-formatted like every stage's data, so the
# tokens a chat model actually sees (template, roles, end-of-turn) are compared.
PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "Sure! 3 plus 4 is 7."}],
    [
        {"role": "user", "content": "Can you tell me what 12 minus 5 is, please?"},
        {"role": "assistant", "content": "Of course. 12 minus 5 is 7. Hope that helps!"},
    ],
    [
        {"role": "user", "content": "Write one short sentence about the sea."},
        {"role": "assistant", "content": "The sea is wide, cold and always moving."},
    ],
)


def _dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """Replace every 4-bit linear layer by a float32 ``nn.Linear`` holding ``dequantize(quantize(W))``.

    Layer by layer, moving each to the CPU as it goes, so the GPU never holds more than the 4-bit
    model and one dequantized matrix. Everything else keeps the values it had in training.
    """
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            linear.weight = nn.Parameter(weight.float().cpu(), requires_grad=False)
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.detach().float().cpu(), requires_grad=False)
            model.set_submodule(name, linear)
    model.hf_quantizer.remove_quantization_config(model)
    return model.to("cpu", torch.float32)


def merge_base_model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, merge_base: str = "dequantized"
) -> tuple[PreTrainedModel, str]:
    """The float32 CPU base an adapter is merged into, and which kind it is.

    ``dequantized`` for a 4-bit run: the weights the adapter was trained on. An 8-bit or unquantized
    run has no rounding to undo (LLM.int8 keeps outlier features in 16 bits, so its forward is not
    a plain dequantized matrix): its original weights are used.
    """
    if merge_base not in MERGE_BASES:
        raise ValueError(f"merge_base must be one of {MERGE_BASES}, got {merge_base!r}")
    if merge_base == "dequantized" and model_args.quantization == "4bit":
        return _dequantized(models.load_causal_lm(model_args, tokenizer)), "dequantized"
    if merge_base == "dequantized" and model_args.quantization == "8bit":
        logger.warning("8-bit base: merging into the original weights (LLM.int8 has no plain dequantized form)")
    path = models.resolve_model_path(model_args.model_name_or_path)
    base = AutoModelForCausalLM.from_pretrained(path, revision=model_args.model_revision, dtype=torch.float32)
    return models.match_tokenizer(base, tokenizer), "original"


def merge_adapter(
    model_args: ModelArguments,
    adapter_dir: str | Path,
    output_dir: str | Path,
    dtype: str = "float32",
    merge_base: str = "dequantized",
) -> Path:
    """Merge a LoRA adapter into its base (see the module docstring) and save it as plain safetensors.

    ``model_args`` is how the training stage loaded the base (its resolved config): the same
    quantization is applied and undone, so the merged weights are the ones the adapter saw.
    """
    output_dir = Path(output_dir)
    tokenizer = models.load_adapter_tokenizer(adapter_dir)
    base, used = merge_base_model(model_args, tokenizer, merge_base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.to(models.DTYPES[dtype]).save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    record = {
        "base": model_args.model_name_or_path,
        "base_quantization": model_args.quantization,
        "merge_base": used,
        "adapter": str(adapter_dir),
        "dtype": dtype,
    }
    (output_dir / MERGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return output_dir


def _probe_batch(tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer.apply_chat_template(p, tokenize=True, return_dict=True)["input_ids"] for p in PROBES]
    return data.right_pad(rows, tokenizer.pad_token_id)


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()


def _kl(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and max over real tokens of KL(reference || other), from full next-token distributions."""
    log_p, log_q = torch.log_softmax(reference, -1), torch.log_softmax(other, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)[mask.bool()]
    return float(per_token.mean()), float(per_token.max())


def verify_merge(
    model_args: ModelArguments, adapter_dir: str | Path, merged_dir: str | Path, merge_base: str
) -> MergeCheck:
    """Compare a merged checkpoint with the model as trained (base loaded as in training + adapter).

    The models are loaded one after another, so the check needs no more memory than the merge; each
    is collected before the next loads (PEFT models hold reference cycles, which ``del`` alone does
    not free: measured on a 494M model in 4-bit on CPU, the check then held three copies at once).
    """
    tokenizer = models.load_adapter_tokenizer(adapter_dir)
    ids, mask = _probe_batch(tokenizer)
    trained = PeftModel.from_pretrained(models.load_causal_lm(model_args, tokenizer), str(adapter_dir))
    trained_logits = _logits(trained, ids, mask)
    with trained.disable_adapter():
        base_logits = _logits(trained, ids, mask)
    del trained
    gc.collect()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    merged_logits = _logits(merged, ids, mask)
    del merged
    gc.collect()
    requantized = None
    if model_args.quantization != "none":
        again = ModelArguments(**{**vars(model_args), "model_name_or_path": str(merged_dir)})
        requantized, _ = _kl(trained_logits, _logits(models.load_causal_lm(again, tokenizer), ids, mask), mask)
    kl, max_kl = _kl(trained_logits, merged_logits, mask)
    real = mask.bool()
    agreement = (trained_logits.argmax(-1) == merged_logits.argmax(-1))[real].float().mean()
    return MergeCheck(
        merge_base=merge_base,
        tokens=int(real.sum()),
        kl_vs_trained=kl,
        max_kl_vs_trained=max_kl,
        argmax_agreement=float(agreement),
        max_logit_diff_vs_trained=float((merged_logits - trained_logits)[real].abs().max()),
        max_logit_diff_vs_base=float((base_logits - trained_logits)[real].abs().max()),
        kl_requantized=requantized,
    )


@torch.no_grad()
def _greedy(model: nn.Module, prompt: list[int], eos_ids: list[int], max_new_tokens: int) -> list[int]:
    """The greedy answer to ``prompt``: the most likely next token, one forward pass at a time, up to EOS.

    No ``generate()``: nothing a checkpoint's saved generation config sets (repetition penalty, top-k)
    can make the two models' answers differ for another reason than their weights.
    """
    device = next(model.parameters()).device
    model.eval()
    ids, answer = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].argmax())
        answer.append(token)
        ids.append(token)
        if token in eos_ids:
            break
    return answer


def _probe_prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The probe conversations' user turns, ready for the assistant's answer."""
    return [
        tokenizer.apply_chat_template(p[:1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for p in PROBES
    ]


def full_precision_load(
    model_args: ModelArguments, adapter_dir: str | Path, max_new_tokens: int = 24
) -> FullPrecisionLoad | None:
    """How far the adapter on the unquantized base is from the model as trained (None for an unquantized run).

    What a user gets from ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)``
    (float32, the weights the adapter's config names) against the base quantized as the run loaded it
    plus the adapter: teacher-forced KL and next-token agreement on the probe conversations, and the
    greedy answers to their questions token by token. The models are loaded one after the other.
    """
    if model_args.quantization == "none":
        return None
    tokenizer = models.load_adapter_tokenizer(adapter_dir)
    ids, mask = _probe_batch(tokenizer)
    prompts = _probe_prompts(tokenizer)
    answers: list[list[list[int]]] = []
    logits: list[torch.Tensor] = []
    for unquantized in (False, True):  # as trained, then on the full-precision base
        if unquantized:
            base = merge_base_model(model_args, tokenizer, "original")[0]
        else:
            base = models.load_causal_lm(model_args, tokenizer)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        eos_ids = sampling.eos_token_ids(model.get_base_model(), tokenizer)
        logits.append(_logits(model, ids, mask))
        answers.append([_greedy(model, prompt, eos_ids, max_new_tokens) for prompt in prompts])
        del model, base
        gc.collect()
    (trained, full), real = logits, mask.bool()
    kl, max_kl = _kl(trained, full, mask)
    compared = changed = 0
    for a, b in zip(*answers, strict=True):
        length = max(len(a), len(b))
        compared += length
        changed += sum(1 for i in range(length) if i >= min(len(a), len(b)) or a[i] != b[i])
    return FullPrecisionLoad(
        tokens=int(real.sum()),
        kl_vs_trained=kl,
        max_kl_vs_trained=max_kl,
        argmax_agreement=float((trained.argmax(-1) == full.argmax(-1))[real].float().mean()),
        prompts=len(prompts),
        greedy_tokens=compared,
        greedy_tokens_changed=changed,
        greedy_answers_changed=sum(a != b for a, b in zip(*answers, strict=True)),
    )


def _computes_in_float32(model_args: ModelArguments) -> bool:
    """Whether the model as trained, loaded as :func:`verify_merge` loads it, computes in float32."""
    compute = {model_args.dtype}
    if model_args.quantization == "4bit":
        compute.add(model_args.bnb_4bit_compute_dtype)
    return compute == {"float32"}


def merge_and_verify(
    model_args: ModelArguments,
    adapter_dir: str | Path,
    output_dir: str | Path,
    dtype: str = "float32",
    merge_base: str = "dequantized",
    max_kl: float | None = None,
) -> MergeCheck:
    """Merge, then verify; raise when a merge that should reproduce the trained model does not.

    ``max_kl`` unset: 1e-4 nats per token for a float32 merge of a model trained in float32, 1e-2 when
    either is 16-bit (rounding every weight to bf16 costs more than that tolerance, and so does
    comparing with a model as trained whose 4-bit layers compute in bf16: 1.9e-4 on the tiny SFT model,
    two bf16 steps on CPU). A merge into the original weights of a 4-bit
    base is expected to differ: its KL is reported and logged, not refused. A merge that did not
    merge (one RL framework shipped such a merger) fails the KL check, unless the adapter is zero.
    """
    merge_adapter(model_args, adapter_dir, output_dir, dtype, merge_base)
    gc.collect()  # the merge's base and merged model, before the check loads its own
    record_path = Path(output_dir) / MERGE_FILE
    record = json.loads(record_path.read_text())
    used = record["merge_base"]
    check = verify_merge(model_args, adapter_dir, output_dir, used)
    record_path.write_text(json.dumps({**record, "check": asdict(check)}, indent=2) + "\n")
    exact = dtype == "float32" and _computes_in_float32(model_args)
    limit = max_kl if max_kl is not None else (1e-4 if exact else 1e-2)
    if check.max_logit_diff_vs_base == 0.0:  # a zero adapter (e.g. one step of warm-up from lr 0): nothing to check
        logger.warning("%s: the adapter does not change the model (all LoRA updates are zero)", adapter_dir)
    expected_exact = used == "dequantized" or model_args.quantization == "none"
    if check.kl_vs_trained > limit:
        message = (
            f"merged model {output_dir} differs from the model as trained by KL {check.kl_vs_trained:.2e} "
            f"per token (limit {limit:.0e}; greedy agreement {check.argmax_agreement:.1%})"
        )
        if expected_exact:
            raise RuntimeError(f"{message}: the merge does not reproduce base+adapter")
        logger.warning("%s: merge_base original on a %s base", message, model_args.quantization)
    return check
