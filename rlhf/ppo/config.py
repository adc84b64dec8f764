"""The RL stage's configuration (``rlhf ppo``): PPO with GAE, or the critic-free GRPO, RLOO and REINFORCE++.

Beside the RL trainer it configures rather than in :mod:`rlhf.stages`, because the trainer and the
policy sampler read it and do not import the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rlhf.arguments import RunOptions, auto_precision, check_trackers
from rlhf.policy.config import SamplingConfig, ScoringConfig
from rlhf_core.errors import ConfigError

# transformers' schedules that need nothing but warm-up and length (no metric, no extra arguments).
PPO_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)


@dataclass
class PPOConfig(RunOptions, SamplingConfig, ScoringConfig):
    """Online RL on one shared base: PPO with GAE, or the critic-free GRPO, RLOO and REINFORCE++.

    TRL 1.x has no PPO config to subclass; fields follow TRL 1.12's PPO names, and TRL's GRPO names
    for what GRPO added (``num_generations``, ``scale_rewards``, ``loss_type``, ``reward_funcs``,
    ``reward_weights``; its ``beta`` is ``kl_coef`` here). Defaults are for LoRA policies: roughly 10x
    the learning rate of full fine-tuning.
    """

    output_dir: str = field(
        default="runs/ppo", metadata={"help": "Run folder: policy adapter, value adapter, metrics."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of sampling, data order and adapter initialisation."})
    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": "gae: PPO with a critic (value adapter and head). Critic-free, no value model in memory: "
            "grpo (score minus its group's mean, over num_generations answers per prompt; see scale_rewards), "
            "rloo (minus the mean of the other answers to the prompt), reinforce_pp (REINFORCE++: returns "
            "normalised over the whole batch).",
            "choices": ["gae", "grpo", "rloo", "reinforce_pp"],
        },
    )
    num_generations: int | None = field(
        default=None,
        metadata={
            "help": "Answers sampled per prompt in an iteration (a group). Unset: 4 for grpo and rloo (which need "
            ">= 2), 1 for gae and reinforce_pp. Must divide rollout_batch_size."
        },
    )
    scale_rewards: bool = field(
        default=True,
        metadata={"help": "grpo: divide by the group's std (GRPO); false is Dr. GRPO's choice (no difficulty bias)."},
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "How token losses make a minibatch loss (TRL's GRPO names): dapo: every token weighs the same "
            "(PPO's usual); grpo: mean per answer, then over answers (favours short answers); dr_grpo: sum over "
            "tokens / (answers x max_new_tokens).",
            "choices": ["dapo", "grpo", "dr_grpo"],
        },
    )
    steps: int = field(default=100, metadata={"help": "Iterations (each: rollout, scoring, update)."})
    rollout_batch_size: int = field(
        default=64,
        metadata={"help": "Answers (episodes) sampled per iteration, per process: num_generations per prompt."},
    )
    mini_batch_size: int = field(default=16, metadata={"help": "Episodes per optimizer step within an iteration."})
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "Episodes per forward/backward (gradient accumulation); unset: mini_batch_size."},
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the policy LoRA."})
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value LoRA and head; unset: learning_rate."}
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "transformers' learning rate schedule (get_scheduler) over `steps` iterations.",
            "choices": list(PPO_SCHEDULERS),
        },
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up iterations (from 0: the first iteration does not move)."}
    )
    optim: str = field(
        default="adamw_torch",
        metadata={
            "help": "Optimizer; paged 8-bit AdamW saves memory on GPUs.",
            "choices": ["adamw_torch", "paged_adamw_8bit"],
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping, per role (policy, value)."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompts longer than this many tokens follow the `overlong` policy (drop or error)."},
    )
    # KL to the reference (the SFT model)
    kl_coef: float = field(
        default=0.05,
        metadata={
            "help": "Initial KL coefficient (GRPO's beta). 0: no KL, and no reference forward pass at all "
            "(the final evaluation still measures the KL)."
        },
    )
    kl_penalty: str = field(
        default="reward",
        metadata={
            "help": "Where the KL goes: reward (a per-token penalty in the rewards, as in InstructGPT and "
            "REINFORCE++) or loss (kl_coef * KL added to the policy loss, as in GRPO).",
            "choices": ["reward", "loss"],
        },
    )
    kl_estimator: str | None = field(
        default=None,
        metadata={
            "help": "Per-token KL estimator. k1 (log-ratio): unbiased, the standard choice for the reward "
            "penalty. k3 ((r-1) - log r): never negative and less noisy; as a reward its expectation is the KL "
            "but the gradient it induces is not the KL's (biased); as a loss term (GRPO) its gradient is right, "
            "where k1's is zero on average. Unset: k1 in the reward, k3 in the loss.",
            "choices": ["k1", "k3"],
        },
    )
    adaptive_kl_target: float | None = field(
        default=None,
        metadata={
            "help": "Adaptive KL coefficient (Ziegler et al.): the sequence KL (nats) kl_coef is steered to; unset "
            "keeps kl_coef fixed. Not early stopping: that is max_approx_kl."
        },
    )
    kl_horizon: float = field(default=10_000, metadata={"help": "Adaptive KL horizon, in episodes."})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "Subtracted from the score of a response that did not end with EOS."}
    )
    normalize_reward: bool = field(
        default=True, metadata={"help": "Divide scores by their running std (and centre them)."}
    )
    reward_clip: float | None = field(default=5.0, metadata={"help": "Clip normalised scores to +-this."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards before GAE."})
    gamma: float = field(default=1.0, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip."})
    max_approx_kl: float | None = field(
        default=None,
        metadata={
            "help": "Stop an iteration's remaining updates once the policy's approx KL to its rollout exceeds this."
        },
    )
    value_init: str = field(
        default="reward",
        metadata={
            "help": "Initialise the critic from the reward model, or at random.",
            "choices": ["reward", "random"],
        },
    )
    policy_init: str | None = field(
        default=None,
        metadata={
            "help": "Start the policy from this run folder's adapter (an earlier `rlhf ppo` run, e.g. the previous "
            "round of `rlhf pipeline --rounds`) instead of a fresh LoRA; the KL leash stays to the base (SFT) model."
        },
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory in updates."})
    fsdp: str = field(
        default="",
        metadata={
            "help": "'full_shard' (or transformers' 'full_shard auto_wrap'): shard the one base, its adapters and "
            "heads over the job's processes with FSDP2, each decoder layer a unit (torchrun --nproc_per_node N); "
            "empty: every process holds the whole model and gradients are averaged (data-parallel)."
        },
    )
    # Evaluation and logging
    eval_max_prompts: int | None = field(
        default=None, metadata={"help": "Held-out prompts to evaluate on at the end (unset: all; 0: none)."}
    )
    eval_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "Sampling seeds of the final evaluation."}
    )
    logging_steps: int = field(
        default=1, metadata={"help": "Log to the trackers (report_to) every N iterations (metrics.jsonl has all)."}
    )
    save_steps: int = field(default=20, metadata={"help": "Checkpoint every N iterations."})
    report_to: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Trackers (accelerate.tracking's: tensorboard, wandb, trackio, mlflow, ...) the first process "
            "logs to every logging_steps iterations; tensorboard writes under output_dir/runs."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    # Keys of other PPO implementations that mean something else, or nothing, here.
    retired_keys: ClassVar[dict[str, str]] = {
        "target_kl": "it is called adaptive_kl_target here (the KL the adaptive coefficient steers to); for early "
        "stopping of an iteration, which target_kl means in CleanRL and old TRL, use max_approx_kl",
        "vf_coef": "policy and value are disjoint parameters, clipped separately and scaled per parameter by Adam, "
        "so a loss weight would cancel out; set value_learning_rate to change the critic's pace",
        "beta": "GRPO's beta is kl_coef here (with kl_penalty: loss for GRPO's KL loss term)",
        "max_completion_length": "it is max_new_tokens here",
        "num_iterations": "GRPO's num_iterations is ppo_epochs here",
        "epsilon": "GRPO's epsilon is cliprange here",
        "max_steps": "PPO counts iterations (each a rollout, scoring and an update) with steps, e.g. --steps 2",
        "num_train_epochs": "PPO runs steps iterations (--steps); ppo_epochs is the passes over each rollout",
        "total_episodes": "PPO runs steps iterations of rollout_batch_size episodes; set steps",
        "num_ppo_epochs": "it is ppo_epochs here",
        "response_length": "it is max_new_tokens here",
        "per_device_train_batch_size": "PPO samples rollout_batch_size answers per iteration and steps the "
        "optimizer every mini_batch_size of them",
        "gradient_accumulation_steps": "mini_batch_size episodes make one optimizer step, micro_batch_size go "
        "through each forward/backward",
    }

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        """Whether the KL to the reference is needed during training (kl_coef 0 skips its forward pass)."""
        return self.kl_coef > 0

    def __post_init__(self) -> None:
        auto_precision(self)
        grouped = self.advantage_estimator in ("grpo", "rloo")
        if self.num_generations is None:
            self.num_generations = 4 if grouped else 1
        if self.num_generations < 1 or (grouped and self.num_generations < 2):
            raise ConfigError(
                f"num_generations: {self.num_generations}; {self.advantage_estimator} compares answers to the same "
                "prompt, so it needs at least 2"
                if grouped
                else f"num_generations: {self.num_generations} must be at least 1"
            )
        if self.rollout_batch_size % self.num_generations:
            raise ConfigError(
                f"num_generations: {self.num_generations} does not divide rollout_batch_size "
                f"{self.rollout_batch_size} (answers per iteration = prompts x num_generations)"
            )
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef: {self.kl_coef} < 0 would reward moving away from the reference")
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_penalty == "loss" else "k1"
        if self.kl_penalty == "loss" and self.kl_estimator == "k1":
            raise ConfigError(
                "kl_estimator: k1 as a loss term has zero gradient on average; use k3 with kl_penalty loss"
            )
        if self.adaptive_kl_target is not None and self.kl_coef == 0:
            raise ConfigError("adaptive_kl_target: an adaptive coefficient cannot move from kl_coef 0")
        super().__post_init__()  # the sampling and scoring fields' checks (SamplingConfig, ScoringConfig)
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError("rollout_batch_size must be a multiple of mini_batch_size")
        micro = self.micro_batch_size or self.mini_batch_size
        if self.mini_batch_size % micro:
            raise ConfigError("mini_batch_size must be a multiple of micro_batch_size")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [r for r in self.report_to if r != "none"]
        if self.report_to:
            check_trackers(self.report_to, library="accelerate")
        if self.lr_scheduler_type == "constant" and self.warmup_steps:
            raise ConfigError(
                f"warmup_steps: {self.warmup_steps} with lr_scheduler_type constant, which has no warm-up "
                "(transformers' schedule); use constant_with_warmup"
            )
        self._check_fsdp()

    def _check_fsdp(self) -> None:
        """What FSDP2 sharding of the RL stage supports: full sharding with decoder-layer units, AdamW."""
        words = set(self.fsdp.split())
        if not words:
            return
        if words - {"full_shard", "auto_wrap"} or "full_shard" not in words:
            raise ConfigError(
                f"fsdp: {self.fsdp!r} is not supported by the RL stage; use 'full_shard' (decoder layers as units)"
            )
        if self.optim != "adamw_torch":
            raise ConfigError(f"fsdp: optim {self.optim} does not step sharded parameters; use optim adamw_torch")
        if self.rollout_engine == "merged":
            raise ConfigError(
                "fsdp: rollout_engine merged needs the whole base in each process; use rollout_engine transformers "
                "(auto picks it when sharded)"
            )
