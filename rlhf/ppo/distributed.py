"""The few collective operations PPO needs, as no-ops in a single process.

PPO here does not wrap the model in DistributedDataParallel: a forward through a second adapter
breaks DDP's reducer ("Expected to have finished reduction...") unless it searches for unused
parameters on every step. Instead each rank computes its gradients and they are averaged by hand
before the optimizer step, which gives the same update (tested on 2 gloo ranks). Under FSDP2
(``--fsdp``, :mod:`rlhf.sharding`) FSDP averages the sharded parameters' gradients itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env() -> None:
    """Join the process group torchrun/accelerate set up (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (a copy; the input is left as is)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over ranks, in one flat buffer.

    Sharded parameters (FSDP2, :mod:`rlhf.sharding`) are left out: FSDP's reduce-scatter has
    already averaged their gradients.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None and not isinstance(p.grad, DTensor)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
