"""What the policy service is told: how to sample (:class:`SamplingConfig`) and what scores the answers
(:class:`ScoringConfig`).

Declared once, here: ``rlhf ppo``'s config inherits both (its recipes and flags set these fields as
before), and ``rlhf eval`` and the pipeline's later rounds build them from a run's resolved options
(:func:`rlhf.config.from_options`). Torch-free dataclasses; the sampler turns them into what it
draws with (:class:`rlhf.policy.sampling.SamplingSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_core.errors import ConfigError


@dataclass
class SamplingConfig:
    """How a policy's answers are sampled and measured: length, temperature, truncation, engine, batches."""

    max_new_tokens: int = field(default=53, metadata={"help": "Response length cap (TRL 1.12's response_length)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (log-probs use the same)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables."})
    rollout_engine: str = field(
        default="auto",
        metadata={
            "help": "What samples the answers (rlhf/policy/engine.py): transformers (generate() on the training "
            "model); merged (a float32 copy of the policy with the LoRA merged, refreshed every iteration: faster, "
            "costs a float32 copy of the base's linear layers, needs float32 compute); auto: merged where the trainer "
            "computes in float32 and the copy takes at most 512 MiB (the tiny model), else transformers.",
            "choices": ["auto", "transformers", "merged"],
        },
    )
    forward_batch_size: int = field(default=64, metadata={"help": "Episodes per no-grad forward (scoring)."})
    pack_groups: bool = field(
        default=True,
        metadata={
            "help": "Measure the answers to one prompt as one row holding the prompt once (a block mask keeps "
            "answers apart; same log-probs and gradients), when the model's attention takes it (eager, sdpa) "
            "and it costs less compute than a padded row per answer. Minibatches then keep groups together."
        },
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: {self.max_new_tokens}; an answer needs at least 1 new token")
        if not self.temperature > 0:
            raise ConfigError(
                f"temperature: {self.temperature}; it divides the logits, so it must be > 0 (0.01 is near-greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: {self.top_p}; a probability mass in (0, 1] (1 keeps every token)")
        if self.top_k < 0:
            raise ConfigError(f"top_k: {self.top_k}; a count of tokens, or 0 for no top-k")
        if self.forward_batch_size < 1:
            raise ConfigError(f"forward_batch_size: {self.forward_batch_size}; at least 1 episode per forward")
        after = getattr(super(), "__post_init__", None)  # PPOConfig's next base: ScoringConfig's checks
        if after is not None:
            after()


@dataclass
class ScoringConfig:
    """What scores a policy's answers: the reward model (or ensemble), Python reward functions, a gold judge."""

    reward_model_path: str | None = field(
        default=None, metadata={"help": "Run folder of `rlhf reward` (its LoRA and score head are loaded, frozen)."}
    )
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Python reward functions, 'package.module:function', called as TRL's GRPO calls reward_funcs "
            "(prompts=, completions=, completion_ids=, **kwargs) -> one float per completion. Added to the "
            "reward model's score (if reward_model_path is set) with reward_weights."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (unset: 1 each)."}
    )
    reward_model_weight: float = field(default=1.0, metadata={"help": "Weight of the reward model's score."})
    reward_aggregation: str = field(
        default="mean",
        metadata={
            "help": "How a reward ensemble's members (rlhf reward --ensemble_size K), each standardised, make one "
            "score: mean; uwo (mean - uwo_coef x variance across members: discounts what they disagree on); wco "
            "(the lowest member). One reward model: mean.",
            "choices": ["mean", "uwo", "wco"],
        },
    )
    uwo_coef: float = field(
        default=1.0, metadata={"help": "reward_aggregation uwo: the weight of the members' variance."}
    )
    gold_judge: str | None = field(
        default=None,
        metadata={"help": "'module:function' scoring (prompt, response) -> float, e.g. the tiny task's judge."},
    )

    def __post_init__(self) -> None:
        if self.uwo_coef < 0:
            raise ConfigError(f"uwo_coef: {self.uwo_coef} < 0 would reward what the reward models disagree on")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"reward_weights: {len(self.reward_weights)} weights for {len(self.reward_funcs)} reward_funcs"
            )
