"""FSDP2 sharding of one base model (4-bit QLoRA or full precision) with its LoRA adapters.

Two users: the RL stage shards its one base itself (:func:`shard`, below); ``sft``, ``reward``, ``dpo`` and
``kto`` hand the model to TRL's trainers, whose FSDP2 is Accelerate's, and only set it up for FSDP-QLoRA
(:func:`prepare_trainer`, :func:`wrap_decoder_layers`, :func:`gather_for_save`; the last section).

``fully_shard`` goes on each decoder layer (the model's ``_no_split_modules``: the wrap unit
transformers and Accelerate use) and then on the root, so every process holds about ``1/N`` of the
base and adapter weights between passes and all-gathers one layer at a time.

Why a 4-bit base needs care, and what keeps it correct (each measured with 2 gloo processes on CPU,
``tests/test_sharding.py``; the reproduction is ``scripts/fsdp_check.py``):

* bitsandbytes' CPU inference kernel (CPUs with AVX512-BF16) repacks a ``Linear4bit`` weight the
  first time the layer runs in eval mode without grad, and marks its ``quant_state`` as repacked, in
  place. Under FSDP2 the weight is rebuilt from the unpacked shards at every all-gather while the
  ``quant_state`` (shared, not a parameter) still says "repacked": from the second pass on every
  answer is garbage ("14 14 14 ..." where the unsharded model says "3 plus 4 is 7."). :func:`shard`
  turns that kernel off and refuses a model that has already repacked.
* bitsandbytes gives the all-gathered plain tensor its ``quant_state`` back from the module
  (``fix_4bit_weight_quant_state_from_module``), so nothing else is lost in the all-gather.
* The packed 4-bit bytes must never be cast or pass through float arithmetic. FSDP2 (torch >= 2.6)
  shards ``uint8`` storage as is and leaves non-float parameters out of mixed precision; with
  ``bnb_4bit_quant_storage`` a float dtype and a ``MixedPrecisionPolicy`` that casts parameters the
  packed bytes are reinterpreted as numbers (measured: a shape error; bitsandbytes #1945 reports NaN
  patterns rewritten on GPU). So no parameter casting policy is used here: compute precision comes
  from ``bnb_4bit_compute_dtype`` and autocast, as it does unsharded.

The quantization statistics (``quant_state``: absmax, code) are not parameters: every process keeps
all of them (about 1/16 of the 4-bit weight bytes with double quantization).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from rlhf_core.errors import ConfigError

if TYPE_CHECKING:  # rlhf.arguments imports this module
    from transformers import Trainer, TrainingArguments

    from rlhf.arguments import ModelArguments

FSDP_MODES = ("full_shard",)


def check_world(option: str = "fsdp") -> int:
    """The number of processes, refusing one: sharding over a single process only adds collectives."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        raise ConfigError(
            f"{option}: sharding needs 2 or more processes (torchrun --nproc_per_node N); "
            "one process holds the whole model: drop the option"
        )
    return world


def check_base(model_args: ModelArguments) -> None:
    """What ``fsdp`` cannot shard, refused before anything loads (the process count, 8-bit, a LoRA on the head)."""
    check_world()
    if model_args.quantization == "8bit":
        raise ConfigError(
            "fsdp: quantization 8bit cannot be sharded (its int8 scales are no parameters); use 4bit or none"
        )
    head = {"lm_head", "embed_tokens"}
    targets = model_args.lora_target_modules or []
    adapted = head & {*([targets] if isinstance(targets, str) else targets), *(model_args.lora_modules_to_save or [])}
    if adapted:
        raise ConfigError(
            f"fsdp: an adapter on {sorted(adapted)[0]} (lora_target_modules / lora_modules_to_save) is not sharded "
            "here: the output head is tied to the embeddings and read outside the sharded passes; use all-linear"
        )


def decoder_layers(model: PreTrainedModel) -> list[nn.Module]:
    """The model's decoder layers: the modules whose class its ``_no_split_modules`` names."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"fsdp: {type(model).__name__} names no decoder layer class (_no_split_modules) to shard")
    return layers


def prepare_quantized(model: nn.Module) -> int:
    """Make a bitsandbytes model safe to shard; returns how many 4-bit layers it has.

    8-bit layers keep their scales in a separate int8 state that FSDP would shard apart from the
    weights, so they are refused.
    """
    import bitsandbytes as bnb

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            raise ConfigError(f"fsdp: quantization 8bit ({name}) cannot be sharded; use quantization 4bit or none")
        if isinstance(module, bnb.nn.Linear4bit):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                raise ConfigError(
                    f"fsdp: {name} was repacked by bitsandbytes' CPU inference kernel before sharding; "
                    "load the model through rlhf.models and shard it before any forward pass"
                )
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def shard(root: nn.Module, causal_lm: PreTrainedModel, forward_methods: Sequence[str] = ("generate",)) -> DeviceMesh:
    """Shard ``root`` (the causal LM, or a module holding it) over every process of the job.

    ``forward_methods``: methods of ``root`` other than ``forward`` that run the model (``generate``);
    FSDP all-gathers the root's weights before them (without, ``generate`` fails with "aten.embedding
    got mixed torch.Tensor and DTensor"). Call it before building the optimizer: the parameters
    become new (sharded) objects. The causal LM is marked as FSDP-managed, so ``generate`` keeps
    every process stepping until all have finished (transformers' ``synced_gpus``): processes whose
    answers end early would otherwise stop joining the all-gathers of the others.
    """
    check_world()
    if not dist.is_initialized():
        raise RuntimeError("shard() needs the process group (rlhf.distributed.init_from_env)")
    prepare_quantized(root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for layer in decoder_layers(causal_lm):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    causal_lm._is_fsdp_managed_module = True  # what transformers' own FSDP2 setup marks
    for name in forward_methods:
        register_fsdp_forward_method(root, name)
    return mesh


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (a collective: every process must call it), else itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_share(module: nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements in all) over ``module``'s sharded parameters."""
    local = total = 0
    for param in module.parameters():
        if isinstance(param, DTensor):
            local += param.to_local().numel()
            total += param.numel()
    return local, total


def optimizer_state_share(optimizer: torch.optim.Optimizer) -> float:
    """Elements of the optimizer's sharded state tensors (Adam's moments) this process holds, of all."""
    states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, DTensor)]
    return sum(t.to_local().numel() for t in states) / max(1, sum(t.numel() for t in states))


# ----------------------------------------------------------------------------------------------
# The TRL-based stages (sft, reward, dpo, kto): Accelerate's FSDP2, set up for FSDP-QLoRA

# transformers' `fsdp` words that FSDP2 takes (hybrid_shard and no_shard exist only in the deprecated FSDP1)
TRAINER_FSDP_WORDS = ("full_shard", "shard_grad_op", "auto_wrap", "offload")
# what each precision computes and gathers in: FSDP's mixed precision casts every float parameter to it
_PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def trainer_fsdp_options(fsdp: str, fsdp_config: dict[str, Any] | str | None) -> dict[str, Any]:
    """``fsdp_config`` with what FSDP-QLoRA needs by default and what ``fsdp``'s words (transformers') mean.

    FSDP version 2 (Accelerate's ``fully_shard``; version 1 is deprecated in transformers and has
    ``use_orig_params`` semantics PEFT would have to work around) and ``cpu_ram_efficient_loading``
    (one process reads the checkpoint, the others receive their shards: the PEFT and bitsandbytes
    FSDP-QLoRA guides). The wrap unit, the decoder layer, is set from the loaded model
    (:func:`wrap_decoder_layers`). A file path is read as transformers reads it; keys keep or drop
    Accelerate's ``fsdp_`` prefix, as there.
    """
    words = fsdp.split()
    unknown = [w for w in words if w not in TRAINER_FSDP_WORDS]
    if unknown or not {"full_shard", "shard_grad_op"} & set(words):
        raise ConfigError(
            f"fsdp: {fsdp!r} is not an FSDP2 setting; use 'full_shard auto_wrap' (or shard_grad_op; add offload to "
            f"keep shards in CPU memory){' (' + unknown[0] + ' is FSDP1 only)' if unknown else ''}"
        )
    if isinstance(fsdp_config, str):
        try:
            fsdp_config = json.loads(Path(fsdp_config).read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"fsdp_config: {fsdp_config}: not a JSON file of FSDP options ({error})") from error
    options = {k.removeprefix("fsdp_"): v for k, v in (fsdp_config or {}).items()}
    options.setdefault("version", 2)
    if int(options["version"]) != 2:
        raise ConfigError(
            f"fsdp_config: version {options['version']} (FSDP1) is deprecated in transformers and not set up here "
            "for QLoRA; use version 2 (the default)"
        )
    options.setdefault("cpu_ram_efficient_loading", True)
    # the words as transformers reads them under FSDP2 (its string form is deprecated)
    options.setdefault("reshard_after_forward", "full_shard" in words)
    if "offload" in words:
        options.setdefault("cpu_offload", True)
    return options


def accelerator_type() -> str | None:
    """The accelerator this process would compute on (``cuda``, ``xpu``, ...), None on a CPU-only machine."""
    return torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else None


def prepare_trainer(model_args: ModelArguments, config: TrainingArguments, stage: str) -> None:
    """Check a TRL stage's ``fsdp`` against the setup and make the model load as FSDP-QLoRA needs it.

    Called before any data or model loads. Accelerate shards only on accelerators: a multi-process
    CPU job is DDP to it, and transformers then stops with "Using fsdp only works in distributed
    training"; here it is one line. A 4-bit base stores its packed weights in the dtype the run
    computes in (``bnb_4bit_quant_storage``): FSDP shards floating-point parameters only
    (Accelerate leaves ``uint8`` ones whole in every process), and its mixed precision casts every
    float parameter to that dtype, which must then be no cast at all, or the packed bytes would be
    read as numbers (bitsandbytes #1945).
    """
    check_world()
    if config.use_cpu or accelerator_type() is None:
        raise ConfigError(
            f"fsdp: rlhf {stage} shards through Accelerate, which shards only on GPUs (this job computes on the "
            f"CPU); drop --fsdp to train data-parallel (torchrun), or use a GPU. rlhf ppo --fsdp full_shard shards "
            "on CPU"
        )
    check_base(model_args)
    precision = next((dtype for flag, dtype in _PRECISION_DTYPES.items() if getattr(config, flag)), "float32")
    if model_args.quantization == "4bit":
        if model_args.bnb_4bit_compute_dtype != precision:
            raise ConfigError(
                f"fsdp: bnb_4bit_compute_dtype {model_args.bnb_4bit_compute_dtype} under {precision} training: the "
                "sharded 4-bit weights are stored in the compute dtype and must need no cast; leave it unset"
            )
        if model_args.bnb_4bit_quant_storage not in (None, precision):
            raise ConfigError(
                f"fsdp: bnb_4bit_quant_storage {model_args.bnb_4bit_quant_storage} under {precision} training would "
                "be cast by FSDP's mixed precision (packed 4-bit bytes read as numbers); leave it unset"
            )
        model_args.bnb_4bit_quant_storage = precision
    # what `accelerate launch` sets and torchrun does not: transformers then reads the checkpoint in the local
    # first process only (cpu_ram_efficient_loading), the others receive their shards from it
    os.environ["ACCELERATE_USE_FSDP"] = "true"


def wrap_decoder_layers(config: TrainingArguments, model: PreTrainedModel) -> None:
    """Make the loaded model's decoder layer (its ``_no_split_modules``) the FSDP unit, unless the recipe names one.

    Set in ``fsdp_config`` (what the run records) and in the plugin options transformers derived
    from it at parse time (what the trainer's Accelerator is built from).
    """
    names = config.fsdp_config.get("transformer_layer_cls_to_wrap") or sorted(
        {type(layer).__name__ for layer in decoder_layers(model)}
    )
    config.fsdp_config["transformer_layer_cls_to_wrap"] = names
    config.fsdp_plugin_args["transformer_cls_names_to_wrap"] = ",".join(names)


def gather_for_save(trainer: Trainer) -> None:
    """Save the final adapter whole, once, loadable with plain PEFT, whatever checkpoints use.

    With ``state_dict_type: SHARDED_STATE_DICT`` (faster checkpoints) ``save_model`` would write
    per-process shards and no adapter; PEFT's FSDP guide switches to the full state dict first.
    """
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
