"""The rollout-engine seam: what samples answers for RL, evaluation and candidate generation.

A :class:`RolloutEngine` answers a batch of tokenized prompts with the current policy under
:class:`~rlhf.policy.sampling.SamplingSettings` and returns a :class:`Rollout`: the answer tokens cut at the
first EOS, the EOS flags, and the engine's log-prob of each token where it reports them. Whenever the
model may have changed the caller calls :meth:`RolloutEngine.sync` first (``PolicySampler``: before
every generation): an engine that holds weights of its own brings them to the model as it is now (the
policy adapter after the last update; no adapter at all inside ``SharedBase.reference()``). The
trainer does not take the engine's log-probs for its own: it recomputes them (``PolicySampler.logprobs``)
and logs how far apart the two are (``rollout/logprob_gap``); ``tests/test_engine.py`` holds every
engine to the reference one.

Engines here (``rollout_engine`` in the PPO config; ``auto`` picks ``merged`` where it is the
same policy and its copy is small, ``transformers`` otherwise):

* ``transformers`` (:class:`TransformersEngine`, the reference): ``generate()`` on the training model
  itself, every setting from the caller (:mod:`rlhf.policy.sampling`). Nothing to sync; log-probs only on
  request (they cost a batch x length x vocabulary tensor).
* ``merged`` (:class:`MergedEngine`): a plain float32 copy of the policy, the base dequantized once per
  sync with the active LoRA merged into it, decoded by a short loop (:func:`decode`) that reports each
  token's log-prob. Generating through a merged matrix skips what a LoRA layer costs per token (the
  adapter's two extra products; for a 4-bit base, dequantizing every weight at every step): measured
  in ``benchmarks/bench_generation.py`` and ``docs/benchmarks.md``. It costs a float32 copy of the base's
  linear layers, and it is the trainer's policy only where the trainer computes in float32: under
  bf16 or fp16 the merged matrix rounds the LoRA's small update away (see :func:`merged_unsupported`).

An external engine (vLLM, SGLang) fits the same two methods; what it needs is in ARCHITECTURE.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.distributed.fsdp import FSDPModule
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.policy import sampling
from rlhf_core.errors import ConfigError

ENGINES = ("auto", "transformers", "merged")
AUTO_MERGED_MAX_BYTES = 512 * 2**20
"""The largest float32 copy ``auto`` makes: beyond it the copy's memory outweighs its speed (a random-weight
Qwen2.5-0.5B's is 1.4 GB for 1.1x generate()'s tokens/s, and lifts PPO's peak RSS by 1.4-1.7 GB, to 1.4-1.5x SFT's;
``docs/benchmarks.md``). ``rollout_engine: merged`` makes it at any size."""


@dataclass(frozen=True)
class Rollout:
    """What an engine returns for N prompts: one answer each."""

    tokens: torch.Tensor  # N x R long: answer tokens, padding after the first EOS
    mask: torch.Tensor  # N x R float: 1 up to and including the first EOS
    ended: torch.Tensor  # N bool: the answer stopped with an EOS (else it hit max_new_tokens)
    # N x R float: the engine's log-prob of each token under the distribution it drew it from (temperature,
    # top-k, top-p), 0 past EOS; None when the engine does not report them
    logprobs: torch.Tensor | None


class RolloutEngine(Protocol):
    """Generates answers with the current policy; the one interface RL, evaluation and candidates sample through."""

    eos_ids: list[int]
    pad_token_id: int
    device: torch.device  # where it takes the prompts' tensors and returns its own

    def sync(self) -> None:
        """Make the next :meth:`generate` sample from the model as it is now (weights, active adapter or none)."""
        ...

    def generate(self, query: torch.Tensor, query_mask: torch.Tensor, settings: sampling.SamplingSettings) -> Rollout:
        """Answers to left-padded prompts (``query``, ``query_mask``: B x P), cut at the first of ``eos_ids``."""
        ...


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[object], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (chat messages, rendered with the generation prompt; or plain text) as left-padded ids and mask.

    Left-padded so every row ends where generation starts. Plain text gets the tokenizer's special
    tokens; a rendered chat template already holds them.
    """
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=isinstance(prompts[0], str))
    finally:
        tokenizer.padding_side = side
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def _rollout(tokens: torch.Tensor, logprobs: torch.Tensor | None, eos_ids: list[int], pad_token_id: int) -> Rollout:
    tokens, mask, ended = sampling.cut_at_eos(tokens, eos_ids, pad_token_id)
    # past EOS the padding may lie outside top-p (-inf): filled, not multiplied (-inf * 0 is NaN)
    kept = None if logprobs is None else logprobs[:, : tokens.shape[1]].masked_fill(mask == 0, 0.0)
    return Rollout(tokens, mask, ended, kept)


class TransformersEngine:
    """``generate()`` on the training model itself: the reference engine.

    It samples the live module, so :meth:`sync` has nothing to do. ``logprobs=True`` asks generate()
    for its processed scores to report each token's log-prob (a batch x length x vocabulary tensor:
    for checking, not for every rollout).
    """

    def __init__(self, model: torch.nn.Module, eos_ids: list[int], pad_token_id: int, logprobs: bool = False) -> None:
        self.model, self.eos_ids, self.pad_token_id, self.logprobs = model, eos_ids, pad_token_id, logprobs
        self.device = next(model.parameters()).device

    def sync(self) -> None:
        """Nothing to copy: generate() runs on the model being trained."""

    def generate(self, query: torch.Tensor, query_mask: torch.Tensor, settings: sampling.SamplingSettings) -> Rollout:
        lm = sampling.generative(self.model)
        checkpointing = lm.is_gradient_checkpointing
        if checkpointing:  # generating under checkpointing in train mode samples different tokens
            lm.gradient_checkpointing_disable()
        try:
            args = (self.model, query, query_mask, settings, self.eos_ids, self.pad_token_id)
            if self.logprobs:
                tokens, logprobs = sampling.sample_with_logprobs(*args)
            else:
                tokens, logprobs = sampling.sample(*args), None
        finally:
            if checkpointing:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return _rollout(tokens, logprobs, self.eos_ids, self.pad_token_id)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (N x V, rows summing to 1), drawn with probability ``probs``.

    Inverse-CDF sampling with one uniform number per row: the first token whose cumulative
    probability exceeds it (so a token of probability 0, outside top-k / top-p, is never drawn). The
    cumulative sum is taken in float64, so a token's chance is its probability to ~1e-12 even over a
    152k vocabulary. ``torch.multinomial`` draws one exponential number per token of the vocabulary
    for the same result (measured on one CPU thread: 0.29 vs 3.9 ms for 64 x 606, 9 vs 113 ms for
    8 x 151,936).
    """
    cdf = probs.double().cumsum(-1)
    point = torch.rand(len(probs), 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    settings: sampling.SamplingSettings,
    eos_ids: list[int],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling with a KV cache: new tokens (N x R) and each one's log-prob where it was drawn.

    generate()'s sampling step: float32 logits of the last position, divided by the temperature, cut
    by top-k then top-p (:func:`rlhf.policy.sampling.truncate`), a draw from their softmax (:func:`draw`),
    padding after a row's EOS, and a stop once every row has ended. Without generate()'s
    configuration, processors and stopping machinery; and the log-prob of the drawn token comes for
    one log-softmax of N x V per step.
    """
    width = query.shape[1]
    cache = DynamicCache(config=model.config)
    positions = (query_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding takes no position
    mask = torch.cat([query_mask, query_mask.new_ones(len(query), settings.max_new_tokens)], 1)
    eos = torch.tensor(eos_ids, device=query.device)
    ended = torch.zeros(len(query), dtype=torch.bool, device=query.device)
    out = model(
        input_ids=query, attention_mask=query_mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    )
    tokens, logprobs = [], []
    for step in range(settings.max_new_tokens):
        scores = out.logits[:, -1].float()
        if settings.temperature != 1.0:
            scores = scores / settings.temperature
        scores = sampling.truncate(scores, settings)
        token = draw(scores.softmax(-1))
        logprob = scores.log_softmax(-1).gather(1, token[:, None]).squeeze(1)
        tokens.append(token.masked_fill(ended, pad_token_id))
        logprobs.append(logprob.masked_fill(ended, 0.0))
        ended = ended | torch.isin(token, eos)
        if bool(ended.all()):
            break
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=mask[:, : width + step + 1],
            position_ids=positions,
            past_key_values=cache,
        )
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def _adapters(layer: BaseTunerLayer) -> list[str]:
    """The LoRA adapters a layer holds (an embedding's live in ``lora_embedding_A``)."""
    return [*getattr(layer, "lora_A", {}), *getattr(layer, "lora_embedding_A", {})]


def _vanilla_lora(layer: BaseTunerLayer, adapter: str) -> bool:
    """Whether an adapter of a layer is plain LoRA (its update is ``get_delta_weight``: no DoRA, no LoRA bias)."""
    return adapter not in getattr(layer, "lora_variant", {}) and not getattr(layer, "lora_bias", {}).get(adapter, False)


def merged_unsupported(model: torch.nn.Module, autocast: torch.dtype | None) -> str | None:
    """Why a merged float32 copy would sample another policy than ``model`` computes (None: it would not).

    The trainer measures the policy as ``x @ W + scale * B(A(x))`` in its compute precision. A merged
    float32 matrix is the same function to float32 rounding; in bf16 (8 bits of mantissa) a young
    LoRA's update is far below the rounding of ``W`` and would vanish from the merged copy, an
    8-bit base (LLM.int8's outlier columns) has no plain dense form to merge into, and a base sharded
    with FSDP is whole in no single process.
    """
    import bitsandbytes as bnb

    if autocast is not None:
        return f"would sample in float32 while the trainer computes under {autocast} autocast"
    for name, module in sampling.generative(model).named_modules():
        if isinstance(module, FSDPModule):
            return f"cannot merge a base sharded with FSDP: each process holds part of it ({name or 'the model'})"
        if isinstance(module, bnb.nn.Linear8bitLt):
            return f"cannot merge into an 8-bit base ({name})"
        if isinstance(module, bnb.nn.Linear4bit) and module.compute_dtype not in (None, torch.float32):
            return f"would sample in float32 while the 4-bit base computes in {module.compute_dtype} ({name})"
        if isinstance(module, BaseTunerLayer):
            if not hasattr(module, "lora_A"):
                return f"merges LoRA adapters only; {name} is a {type(module).__name__}"
            odd = [a for a in _adapters(module) if not _vanilla_lora(module, a)]
            if odd:
                return f"merges plain LoRA only; {name} has a DoRA or LoRA-bias adapter ({odd[0]})"
        for pname, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != torch.float32:
                return f"would sample in float32 while {name}.{pname} is {param.dtype}"
    return None


def _dense_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A layer's weight as a plain float32 matrix (a 4-bit one dequantized)."""
    import bitsandbytes as bnb

    weight = layer.weight
    if isinstance(weight, bnb.nn.Params4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()


def _policy_tensors(model: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """Every parameter and buffer of ``model`` as a plain model's name, tensor, and whether it was computed.

    A LoRA layer gives its base weight (dequantized) plus the update of each active adapter (nothing
    while adapters are disabled: the reference); a 4-bit layer without an adapter its dequantized
    weight; anything else (embeddings, norms, rotary buffers) the model's own tensor, shared.
    """
    import bitsandbytes as bnb

    inside: tuple[str, ...] = ()  # the tuner layers seen so far: their sub-modules are folded into them
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if inside and name.startswith(inside):
            continue
        if isinstance(module, BaseTunerLayer):
            inside += (prefix,)
            base = module.get_base_layer()
            weight = _dense_weight(base)
            if not module.disable_adapters and not module.merged:
                for adapter in module.active_adapters:
                    if adapter in _adapters(module):
                        weight = weight + module.get_delta_weight(adapter).float()
            yield f"{prefix}weight", weight, True
            if getattr(base, "bias", None) is not None:
                yield f"{prefix}bias", base.bias.detach(), False
            continue
        for pname, param in module.named_parameters(recurse=False):
            dense = pname == "weight" and isinstance(module, bnb.nn.Linear4bit)
            yield f"{prefix}{pname}", _dense_weight(module) if dense else param.detach(), dense
        for bname, buffer in module.named_buffers(recurse=False):
            yield f"{prefix}{bname}", buffer, False


class MergedEngine:
    """Samples from a plain float32 copy of the policy, refreshed by :meth:`sync`; reports its log-probs.

    The copy is built on the first sync (on the meta device, then given the tensors: no random init)
    and shares every tensor that is not a LoRA or 4-bit layer's weight with the model; a later sync
    writes the merged weights in place, one layer at a time.
    """

    def __init__(self, model: torch.nn.Module, eos_ids: list[int], pad_token_id: int) -> None:
        self.model, self.eos_ids, self.pad_token_id = model, eos_ids, pad_token_id
        self.device = next(model.parameters()).device
        self.copy: PreTrainedModel | None = None

    def sync(self) -> None:
        inner = sampling.generative(self.model)
        if self.copy is None:
            self.copy = self._build(inner)
            return
        with torch.no_grad():
            for name, tensor, computed in _policy_tensors(inner):
                if computed:
                    self.copy.get_parameter(name).copy_(tensor)

    @staticmethod
    def _build(inner: PreTrainedModel) -> PreTrainedModel:
        config = copy.deepcopy(inner.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = type(inner)._from_config(
                config, dtype=torch.float32, attn_implementation=inner.config._attn_implementation
            )
        for name, tensor, _ in _policy_tensors(inner):
            owner, _, attr = name.rpartition(".")
            module = plain.get_submodule(owner)
            if attr in module._parameters:
                module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
            else:
                module._buffers[attr] = tensor
        source = dict(inner.named_modules())
        for name, module in plain.named_modules():  # tensors kept as plain attributes (a rotary's original_inv_freq)
            for attr, value in vars(module).items():
                if isinstance(value, torch.Tensor) and value.is_meta:
                    setattr(module, attr, getattr(source[name], attr))
        left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"the merged copy found no weights for {left[:3]}")
        return plain.eval()

    def generate(self, query: torch.Tensor, query_mask: torch.Tensor, settings: sampling.SamplingSettings) -> Rollout:
        if self.copy is None:
            raise RuntimeError("MergedEngine.generate before sync(): there are no weights to sample from")
        tokens, logprobs = decode(self.copy, query, query_mask, settings, self.eos_ids, self.pad_token_id)
        return _rollout(tokens, logprobs, self.eos_ids, self.pad_token_id)


def build(
    name: str, model: torch.nn.Module, eos_ids: list[int], pad_token_id: int, autocast: torch.dtype | None = None
) -> RolloutEngine:
    """The engine ``name`` (one of :data:`ENGINES`) over ``model``; ``autocast``: the precision the trainer measures in.

    ``auto`` is ``merged`` where the merged copy is the trainer's policy (:func:`merged_unsupported`)
    and small (:data:`AUTO_MERGED_MAX_BYTES`), ``transformers`` otherwise.
    """
    if name not in ENGINES:
        raise ConfigError(f"rollout_engine: unknown {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "transformers":
        return TransformersEngine(model, eos_ids, pad_token_id)
    reason = merged_unsupported(model, autocast)
    if name == "merged" and reason is not None:
        raise ConfigError(f"rollout_engine: merged {reason}; use rollout_engine: transformers")
    if name == "merged" or (reason is None and merged_copy_bytes(model) <= AUTO_MERGED_MAX_BYTES):
        return MergedEngine(model, eos_ids, pad_token_id)
    return TransformersEngine(model, eos_ids, pad_token_id)


def merged_copy_bytes(model: torch.nn.Module) -> int:
    """The memory :class:`MergedEngine` adds: a float32 matrix for every LoRA or 4-bit layer (the rest is shared)."""
    import bitsandbytes as bnb

    modules = list(sampling.generative(model).modules())
    wrapped = {id(m.get_base_layer()) for m in modules if isinstance(m, BaseTunerLayer)}
    copied = [
        m.get_base_layer() if isinstance(m, BaseTunerLayer) else m
        for m in modules
        if isinstance(m, BaseTunerLayer) or (isinstance(m, bnb.nn.Linear4bit) and id(m) not in wrapped)
    ]
    return sum(4 * (m.in_features * m.out_features if hasattr(m, "in_features") else m.weight.numel()) for m in copied)
