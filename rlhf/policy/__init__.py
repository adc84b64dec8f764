"""The policy service: load a policy (a base and its LoRA adapter), sample it, measure and score what it samples.

One package for what every user of a policy needs, whether or not it trains: the RL trainer
(:mod:`rlhf.ppo`) composes it for its rollouts, ``rlhf eval`` samples both policies with it, and the
candidates people rank (:mod:`rlhf.candidates`, round 1 and the pipeline's later rounds) come from
it. :mod:`~rlhf.policy.roles` puts the roles on one base, :mod:`~rlhf.policy.sampler` samples through
the rollout engine (:mod:`~rlhf.policy.engine`, settings from :mod:`~rlhf.policy.sampling`) and
measures log-probs, values and the reward (:mod:`~rlhf.policy.rewards`).

Nothing here imports :mod:`rlhf.ppo`: training stands on this package, not the other way round
(``tests/test_layers.py``).
"""
