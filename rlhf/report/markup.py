"""What the run page and the comparison page share: the style sheet, escaping, how a method is named.

Model output is untrusted text: every string goes through :func:`esc`.
"""

from __future__ import annotations

import html
from typing import Any

from rlhf.results import PPOResult


def esc(value: Any) -> str:
    return html.escape(str(value))


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #1a202c; }
.verdict { padding: 1em 1.2em; border-radius: 8px; font-size: 1.1em; }
.ok { background: #e6ffed; border: 1px solid #2f855a; } .bad { background: #fff5f5; border: 1px solid #c53030; }
.unknown { background: #f7fafc; border: 1px solid #a0aec0; }
.warn { background: #fffaf0; border: 1px solid #c05621; margin-top: 0.8em; } pre { white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.8em 0; width: 100%; } td, th { border: 1px solid #e2e8f0; padding: 6px 8px;
text-align: left; vertical-align: top; } th { background: #f7fafc; } img { max-width: 100%; margin: 0.5em 0; }
.score { color: #718096; font-size: 0.85em; margin-top: 4px; } h2 { margin-top: 1.6em; }
"""


JUDGE_IS_REWARD = (
    "The gold judge was also a training reward (reward_funcs): its scores measure what the policy was "
    "optimised for, not a held-out judgement."
)


ALGORITHMS = {"gae": "PPO (GAE critic)", "grpo": "GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++"}


def method(ppo: PPOResult) -> str:
    reward = " + ".join(ppo.reward_components) if ppo.reward_components else "reward model"
    return f"Algorithm: {ALGORITHMS.get(ppo.advantage_estimator, ppo.advantage_estimator)}; reward: {reward}."


def interval(value: float, low: float, high: float, percent: bool = False) -> str:
    form = "{:.1%}" if percent else "{:+.2f}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"
