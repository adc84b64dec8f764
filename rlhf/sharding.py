"""FSDP2 sharding of one base model (4-bit QLoRA or full precision) with its LoRA adapters.

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

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from rlhf.core.errors import ConfigError

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
        raise RuntimeError("shard() needs the process group (rlhf.ppo.distributed.init_from_env)")
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
