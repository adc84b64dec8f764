"""The RL trainer's checkpoints: adapters, value head, optimizer, schedule, counters and RNG, written atomically.

A checkpoint holds everything a run needs to continue as if it had never stopped (``--resume``):
each trained role's LoRA as a plain PEFT adapter folder, the value head (with a critic), the
optimizer's and scheduler's state, the data cursor, the KL controller and score moments, and every
process's RNG state with a checksum of the weights it held. Sharded (FSDP2), the adapters and the
optimizer state are gathered whole, so a checkpoint loads the same whatever the sharding.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from rlhf import distributed as dist
from rlhf import sharding
from rlhf.policy.roles import POLICY, VALUE_HEAD_FILE, SharedBase
from rlhf.ppo.tracking import STEP_METRICS_FILE

if TYPE_CHECKING:
    from rlhf.ppo.trainer import PPOTrainer

STATE_FILE = "trainer_state.json"


def save_adapter(roles: SharedBase, role: str, folder: Path) -> None:
    """A role's LoRA as a plain PEFT adapter folder (loads with PeftModel.from_pretrained).

    Every process calls it: a sharded run gathers the whole adapter (a collective), the first process writes.
    """
    state = get_peft_model_state_dict(roles.peft, adapter_name=role)
    state = {k: sharding.full(v).detach().cpu().contiguous() for k, v in state.items()}
    if dist.rank() != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = roles.peft.peft_config[role]
    # the base this run loaded, where it is now: a value adapter started from the reward model's would
    # name the base the reward run recorded (another place, once the run folders moved)
    config.base_model_name_or_path = roles.peft.get_base_model().name_or_path
    inference_mode = config.inference_mode
    config.inference_mode = True
    config.save_pretrained(str(folder))
    config.inference_mode = inference_mode


def _trainable_checksum(trainer: PPOTrainer) -> float:
    return float(sum(sharding.full(p).detach().double().sum() for p in trainer.trainable_parameters()))


def save(trainer: PPOTrainer) -> Path:
    """Write a checkpoint atomically: a staging folder renamed once every rank has written its part.

    A run killed while saving leaves only the hidden staging folder, which ``--resume`` ignores.
    """
    roles, output_dir = trainer.roles, trainer.output_dir
    final = output_dir / f"checkpoint-{trainer.step}"
    staging = output_dir / f".checkpoint-{trainer.step}.partial"
    if dist.rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    for role in roles.trainable:
        save_adapter(roles, role, staging / role)
    if roles.has_critic:
        roles.save_value_head(staging / VALUE_HEAD_FILE)
    optimizer = _optimizer_state(roles, trainer.optimizer)
    if dist.rank() == 0:
        torch.save(optimizer, staging / "optimizer.pt")
        torch.save(trainer.scheduler.state_dict(), staging / "scheduler.pt")
        state = {
            "step": trainer.step,
            "epoch": trainer.epoch,
            "cursor": trainer.cursor,
            "kl_controller": trainer.kl_controller.state_dict(),
            "score_moments": trainer.score_moments.state_dict(),
            "world_size": dist.world_size(),
        }
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    dist.barrier()
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        # every rank must hold the same weights; a resume compares these
        "trainable_checksum": _trainable_checksum(trainer),
    }
    torch.save(rng, staging / f"rng_state_{dist.rank()}.pth")
    dist.barrier()
    if dist.rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        _rotate(output_dir, trainer.config.save_total_limit)
    dist.barrier()
    return final


def _optimizer_state(roles: SharedBase, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state to save; sharded, the whole of it (a collective), keyed by parameter name."""
    if not roles.sharded:
        return optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(roles, optimizer, options=options)


def _load_optimizer_state(roles: SharedBase, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if not roles.sharded:
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(roles, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _rotate(output_dir: Path, limit: int | None) -> None:
    """Keep the ``limit`` latest checkpoints (all of them when unset)."""
    if limit is None:
        return
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in checkpoints[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def load(trainer: PPOTrainer, folder: str | Path) -> None:
    """Restore everything a checkpoint holds into ``trainer``, so the run continues as if never stopped."""
    folder, roles = Path(folder), trainer.roles
    state = json.loads((folder / STATE_FILE).read_text())
    if state["world_size"] != dist.world_size():
        raise ValueError(f"{folder} was written by {state['world_size']} processes; resume with as many")
    for role in roles.trainable:
        roles.load_adapter(role, folder / role)
    if roles.has_critic:
        roles.load_value_head(folder / VALUE_HEAD_FILE)
    roles.use(POLICY)
    optimizer = torch.load(folder / "optimizer.pt", map_location=trainer.device, weights_only=False)
    _load_optimizer_state(roles, trainer.optimizer, optimizer)
    trainer.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    trainer.step, trainer.epoch, trainer.cursor = state["step"], state["epoch"], state["cursor"]
    trainer.kl_controller.load_state_dict(state["kl_controller"])
    trainer.score_moments.load_state_dict(state["score_moments"])
    rng = torch.load(folder / f"rng_state_{dist.rank()}.pth", weights_only=False)
    if abs(rng["trainable_checksum"] - _trainable_checksum(trainer)) > 1e-6 * max(1.0, abs(rng["trainable_checksum"])):
        raise ValueError(f"{folder}: restored weights differ from those rank {dist.rank()} saved")
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    metrics_file = trainer.output_dir / STEP_METRICS_FILE
    if metrics_file.exists():  # drop what a killed run logged after this checkpoint
        kept = [line for line in metrics_file.read_text().splitlines() if json.loads(line)["step"] <= trainer.step]
        trainer.history = [json.loads(line) for line in kept]
        if dist.rank() == 0:
            metrics_file.write_text("".join(line + "\n" for line in kept))
