"""Four PPO roles on ONE copy of the (quantized) base weights.

Peers keep four models for PPO (policy, reference, value, reward); TRL's last PPOTrainer kept four
full models. With LoRA the roles differ only by small adapters, so they can share the base:

* **policy**    = base + "policy" LoRA (trainable), initialised to zero so it starts as the SFT model;
* **reference** = base with adapters disabled: the SFT model itself, because PPO's base is the SFT
  adapter merged into the base (``rlhf sft --merge_adapter``);
* **value**     = base + "value" LoRA + a scalar value head (trainable), initialised from the reward
  model (DeepSpeed-Chat and OpenRLHF do this; a critic that starts by predicting the reward helps
  early PPO). The reward model predicts raw scores while PPO's returns are made of normalised ones,
  so the trainer maps the head onto the returns' scale once, on the first batch;
* **reward**    = base + "reward" LoRA + the reward model's score head (frozen).

Critic-free algorithms (GRPO, RLOO, REINFORCE++) load no value adapter or head (``value_init=None``),
and a run rewarded by Python functions alone loads no reward adapter (``reward_dir=None``): what a
run does not use is not in memory.

This is only sound when the reward model was trained on the same base weights (the merged SFT
model) loaded the same way, which the stage checks.

Traps this module handles (each has a test): PEFT's ``set_adapter`` makes the active adapter
trainable and freezes the others, and leaving ``disable_adapter`` unfreezes only the active one, so
``requires_grad`` is reset after every switch; loading a
SEQ_CLS adapter into a causal LM drops its ``score`` module, so the score head is read from the
reward folder's safetensors; under 4-bit the hidden states come out in the compute dtype, so the
heads get float32 inputs; each adapter's forward and backward run as a pair (switching
adapters between a checkpointed forward and its backward gives wrong gradients); and dropout is
off everywhere (the reward and value LoRAs carry the reward run's ``lora_dropout``, and a score or a
log-prob that changes from call to call breaks the ratio, the KL and the advantages).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedModel
from trl.trainer.utils import disable_dropout_in_model

from rlhf import distributed, ensemble, sharding
from rlhf.policy import packing
from rlhf_core.errors import ConfigError

POLICY, VALUE, REWARD = "policy", "value", "reward"
SCORE_KEY = "base_model.model.score.weight"
VALUE_HEAD_FILE = "value_head.safetensors"


def load_score_head(reward_dir: str | Path) -> torch.Tensor:
    """The reward model's score head weight (1, hidden), from its adapter file."""
    weights = load_file(str(Path(reward_dir) / "adapter_model.safetensors"))
    if SCORE_KEY not in weights:
        raise ValueError(f"{reward_dir}: adapter has no {SCORE_KEY}; was it trained by `rlhf reward` (SEQ_CLS LoRA)?")
    return weights[SCORE_KEY].float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (HF models otherwise count pad tokens as positions)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class SharedBase(nn.Module):
    """The policy, reference, value and reward roles of PPO over one base model."""

    def __init__(
        self,
        base: PreTrainedModel,
        policy_lora: LoraConfig,
        reward_dir: str | Path | None,
        value_init: str | None = "reward",
    ):
        super().__init__()
        self.peft: PeftModel = get_peft_model(base, policy_lora, adapter_name=POLICY)
        # the reward model, or each member of a reward ensemble (rlhf.ensemble): an adapter and a score head each
        self.reward_members = ensemble.members(reward_dir) if reward_dir is not None else []
        self.reward_adapters = [REWARD if i == 0 else f"{REWARD}_{i}" for i in range(len(self.reward_members))]
        self.reward_heads = nn.ModuleList()
        for name, member in zip(self.reward_adapters, self.reward_members, strict=True):
            self.peft.load_adapter(member.path, adapter_name=name, is_trainable=False)
            score = load_score_head(member.path)
            head = nn.Linear(score.shape[1], 1, bias=False)
            head.weight.data.copy_(score)
            self.reward_heads.append(head.requires_grad_(False))
        self.value_head: nn.Linear | None = None
        score = load_score_head(self.reward_members[0].path) if self.reward_members else None
        if value_init == "reward":
            if score is None:
                raise ValueError("value_init 'reward' copies the reward model: it needs a reward model")
            # a critic that starts as the reward model (an ensemble's first member)
            self.peft.load_adapter(self.reward_members[0].path, adapter_name=VALUE, is_trainable=True)
        elif value_init == "random":
            like = (
                json.loads((Path(self.reward_members[0].path) / "adapter_config.json").read_text())
                if self.reward_members
                else {
                    "r": policy_lora.r,
                    "lora_alpha": policy_lora.lora_alpha,
                    "target_modules": policy_lora.target_modules,
                }
            )
            self.peft.add_adapter(
                VALUE,
                LoraConfig(
                    r=like["r"],
                    lora_alpha=like["lora_alpha"],
                    target_modules=like["target_modules"],
                    task_type="CAUSAL_LM",
                ),
            )
        elif value_init is not None:
            raise ValueError(f"value_init must be 'reward', 'random' or None (no critic), got {value_init!r}")
        if value_init is not None:
            self.value_head = nn.Linear(base.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.bias)
            if score is not None and value_init == "reward":
                self.value_head.weight.data.copy_(score)
            else:
                nn.init.zeros_(self.value_head.weight)
        self.trainable = (POLICY, VALUE) if value_init is not None else (POLICY,)
        self.sharded = False
        disable_dropout_in_model(self.peft)
        device = next(p for p in base.parameters()).device
        self.reward_heads.to(device)
        if self.value_head is not None:
            self.value_head.to(device)
        self.use(POLICY)

    # -- sharding -------------------------------------------------------------------------------

    def shard(self) -> None:
        """FSDP2 over every process of the job: the base, all adapters and the heads sharded once.

        This module is the FSDP root: FSDP gathers its own weights (embeddings, final norm, tied output
        head, value and reward heads) before :meth:`decoder_pass` and ``generate``, and keeps them
        until the next backward, when the heads and the log-probs read them. Whoever generates with
        the PEFT model (the sampler, a rollout engine) goes through the root's ``generate``
        (:mod:`rlhf.sharding`).
        """
        self.generate = self.peft.generate
        sharding.shard(self, self.causal_lm, forward_methods=("generate", "decoder_pass"))
        self.peft.generate = self.generate
        self.sharded = True

    @staticmethod
    def _as_shards(state: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> None:
        """Whole tensors of a saved state, in place, as the sharded tensors they load into (``like``'s)."""
        for key, value in state.items():
            target = like.get(key)
            if isinstance(target, DTensor):
                state[key] = distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements)

    # -- adapters -------------------------------------------------------------------------------

    def use(self, role: str) -> None:
        """Activate a role's adapter and put ``requires_grad`` back where PPO needs it."""
        self.peft.set_adapter(role)
        self.peft.base_model.set_requires_grad(list(self.trainable), requires_grad=True)
        if self.has_reward_model:
            self.peft.base_model.set_requires_grad(self.reward_adapters, requires_grad=False)

    def load_adapter(self, role: str, folder: str | Path) -> None:
        """Put a saved LoRA (``folder/adapter_model.safetensors``, as PEFT writes it) into a role's adapter."""
        path = Path(folder) / "adapter_model.safetensors"
        if not path.is_file():
            raise ConfigError(f"{folder}: no adapter_model.safetensors to load as the {role} adapter")
        device = next(p for p in self.peft.parameters()).device
        state = load_file(str(path), device=str(device))
        self._to_shards()
        self._as_shards(state, get_peft_model_state_dict(self.peft, adapter_name=role))
        set_peft_model_state_dict(self.peft, state, adapter_name=role)
        self.use(self.peft.active_adapter)  # loading may touch requires_grad: put the roles' flags back

    @property
    def has_critic(self) -> bool:
        return self.value_head is not None

    @property
    def has_reward_model(self) -> bool:
        return len(self.reward_heads) > 0

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode for passes that measure (sampling, log-probs, values, rewards), then the mode before."""
        was_training = self.peft.training
        self.peft.eval()
        try:
            yield
        finally:
            self.peft.train(was_training)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The SFT model: every adapter disabled.

        PEFT freezes all adapters while they are disabled and, on the way out, makes only the
        active one trainable again, so the critic's LoRA would silently stay frozen: restore it.
        """
        active = self.peft.active_adapter
        try:
            with self.peft.disable_adapter():
                yield
        finally:
            self.use(active)

    def trainable_parameters(self, role: str) -> list[nn.Parameter]:
        """The parameters one role trains: its LoRA (and the value head for the critic)."""
        params = [p for n, p in self.peft.named_parameters() if f".{role}." in n and "lora_" in n]
        if role == VALUE:
            params += list(self._value_head().parameters())
        return params

    # -- the value head ------------------------------------------------------------------------

    def _value_head(self) -> nn.Linear:
        if self.value_head is None:
            raise RuntimeError("this shared base has no critic (a critic-free algorithm)")
        return self.value_head

    def _to_shards(self) -> None:
        """Sharded: put the sharded parameters back on the modules, so that writes to them last.

        FSDP leaves the root's gathered weights on the modules after a pass and frees them at the next
        backward; a write to a gathered copy would be lost then.
        """
        if self.sharded:
            cast(FSDPModule, self).reshard()

    @torch.no_grad()
    def affine_value_head(self, slope: float, intercept: float) -> None:
        """Make the head predict ``slope * (its prediction) + intercept`` (its weight and bias, in place)."""
        self._to_shards()
        head = self._value_head()
        head.weight.mul_(slope)
        head.bias.mul_(slope).add_(intercept)

    def save_value_head(self, path: Path) -> None:
        """Write the head (sharded: every process takes part, the first writes)."""
        state = {k: sharding.full(v).detach().cpu().contiguous() for k, v in self._value_head().state_dict().items()}
        if distributed.rank() == 0:
            save_file(state, str(path))

    def load_value_head(self, path: Path) -> None:
        self._to_shards()
        head = self._value_head()
        state = load_file(str(path), device=str(head.weight.device))
        self._as_shards(state, head.state_dict())
        head.load_state_dict(state)

    # -- forward passes -------------------------------------------------------------------------

    @property
    def causal_lm(self) -> PreTrainedModel:
        return self.peft.base_model.model

    @property
    def packing_weight(self) -> float | None:
        """What a key position's attention costs relative to a token's linear layers, if groups can be packed.

        None when the model cannot take packed groups' block masks (:mod:`rlhf.policy.packing`): an
        attention implementation other than eager or SDPA, or sliding-window layers.
        """
        config = self.causal_lm.config.get_text_config()
        if self.causal_lm.config._attn_implementation not in packing.PACKABLE_ATTENTION:
            return None
        windowed = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
        if windowed or any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            return None
        return packing.attention_weight(config.hidden_size, getattr(config, "intermediate_size", None))

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden states of the active adapter (or the reference), without the vocabulary projection.

        ``attention_mask`` is a batch's 2-D padding mask (positions then skip left padding), or the
        4-D boolean block mask of packed groups with their ``positions``; eager attention adds its
        mask to the scores, so a boolean one becomes 0 / -inf there.
        """
        if attention_mask.dim() == 4:
            if positions is None:
                raise ValueError("a 4-D attention mask needs explicit positions")
            if self.causal_lm.config._attn_implementation == "eager":
                blocked = torch.finfo(torch.float32).min
                attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(
                    ~attention_mask, blocked
                )
        return self.decoder_pass(
            input_ids, attention_mask, position_ids(attention_mask) if positions is None else positions
        )

    def decoder_pass(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        decoder = getattr(self.causal_lm, self.causal_lm.base_model_prefix)
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_output_embeddings()(hidden)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._value_head()(hidden.float()).squeeze(-1)

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each reward model's raw score of right-padded sequences (K x B for K members; 1 x B for one model).

        Read at each sequence's last real token, as the reward stage did.
        """
        if not self.has_reward_model:
            raise RuntimeError("this shared base has no reward model (the run is rewarded by functions)")
        last = attention_mask.long().sum(1) - 1
        scores = []
        try:
            for name, head in zip(self.reward_adapters, self.reward_heads, strict=True):
                self.use(name)
                hidden = self.hidden_states(input_ids, attention_mask)
                scores.append(head(hidden[torch.arange(len(last)), last].float()).squeeze(-1))
        finally:
            self.use(POLICY)
        return torch.stack(scores)
