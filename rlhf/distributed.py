"""The few collective operations PPO needs, as no-ops in a single process.

A data-parallel run (several processes, no ``--fsdp``) averages the adapters' and value head's
gradients here, by hand, before each optimizer step; a sharded run (``--fsdp``, :mod:`rlhf.sharding`)
leaves that to FSDP2's reduce-scatter. Why not a library's data parallelism (each measured with 2
gloo processes on the tiny PPO recipe, 2 iterations):

* DistributedDataParallel (what Accelerate's ``prepare(model)`` wraps a model in) reduces once per
  backward over the parameters it expects to be used; an update here runs a backward through the
  policy adapter and then one through the value adapter of the same base, and the second breaks its
  reducer ("Expected to have finished reduction...") unless it searches for unused parameters on
  every step; torch's composable ``replicate`` is the same reducer.
* FSDP2 on a replicate-only mesh (``fully_shard`` over a (N, 1) mesh: HSDP with shards of one, which
  is also what ``replicate_with_fsdp`` builds) gives the same update: losses, adapter weights and value
  head equal to the last bit. But it makes every data-parallel run an FSDP run: the base's weights
  become DTensors, so the merged rollout engine (:mod:`rlhf.policy.engine`, the default where it applies)
  cannot merge them, and ``generate`` runs through FSDP's hooks in step across processes. Rollout
  generation took 0.65 s an iteration against 0.30 s with ``generate`` unwrapped and 0.17 s with the
  merged engine (second iteration, 4 answers per process, one measurement on a shared 2-core machine).

So the data-parallel path keeps this all-reduce of the trainable parameters' gradients (one flat
buffer, one collective per optimizer step) until the merged engine can read replicated weights.
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


def shutdown() -> None:
    """Leave the process group once a command has finished, every process together.

    A group left for the interpreter's exit to tear down can abort a process after its work is done
    (gloo under torchrun: "terminate called without an active exception", exit code -6, seen once in
    CI after the sharded PPO run had written its results), and torchrun then reports the job failed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
