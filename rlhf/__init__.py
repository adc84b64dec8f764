"""rlhf: supervised fine-tuning, reward modelling and PPO on one QLoRA base, on modest hardware."""

__version__ = "0.1.0"
