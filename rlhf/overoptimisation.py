"""Seeing reward over-optimisation while it happens, from the RL stage's own per-iteration metrics.

A policy optimised against a learned reward model first gets better by every measure; then the reward
model's score stops rising (the policy has taken what the model can give) while the policy keeps
moving away from the SFT model, or the members of a reward ensemble start to disagree: the model is
being exploited where it knows least, and a person's judgement stops improving or falls (Gao et al.
2022, https://arxiv.org/abs/2210.10760). Both signs are in ``metrics.jsonl`` (``objective/score``,
``objective/kl``, ``reward/ensemble_std``); :func:`detect` reads them.

Flags, each over the last ``window`` iterations against the ones before:

* **reward flat, KL rising**: the smoothed reward-model score rose by less than ``flat`` of its whole
  rise so far, while the smoothed KL rose by more than ``rising`` (relative);
* **ensemble disagreement rising**: the members' spread rose by more than ``rising`` while the
  ensemble's score was flat.

And the iteration where the **conservative reward** peaked: the score the policy was trained on minus
the KL penalty (``objective/rlhf_reward``, the KL-regularised objective; ``objective/score`` when
there is no KL), smoothed over ``window`` iterations, with the saved checkpoint nearest to it, which
``rlhf export --checkpoint`` exports. Pure: lists of dicts in, a dataclass out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from rlhf.results import Diagnosis

SCORE, KL, SPREAD = "objective/score", "objective/kl", "reward/ensemble_std"
CONSERVATIVE = ("objective/rlhf_reward", SCORE)  # the first one a run logged


def _smoothed(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (shorter at the start)."""
    return [statistics.fmean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def _flags(history: Sequence[dict[str, float]], window: int, flat: float, rising: float) -> list[str]:
    if len(history) < 2 * window or SCORE not in history[-1]:
        return []
    score = _smoothed([h[SCORE] for h in history], window)
    rise_so_far = max(score[-window - 1] - score[0], 0.0)
    recent_rise = score[-1] - score[-window - 1]
    score_flat = rise_so_far > 0 and recent_rise < flat * rise_so_far
    found = []
    at = int(history[-1]["step"])
    if score_flat and KL in history[-1]:
        kl = _smoothed([h[KL] for h in history], window)
        before, now = kl[-window - 1], kl[-1]
        if before > 0 and now > before * (1 + rising):
            found.append(
                f"iteration {at}: the reward model's score is flat ({score[-window - 1]:.2f} -> {score[-1]:.2f} over "
                f"the last {window} iterations) while KL to the SFT model rose {before:.2f} -> {now:.2f} nats: "
                "the policy is moving for nothing the reward model can see"
            )
    if score_flat and SPREAD in history[-1]:
        spread = _smoothed([h[SPREAD] for h in history], window)
        before, now = spread[-window - 1], spread[-1]
        if before > 0 and now > before * (1 + rising):
            found.append(
                f"iteration {at}: the reward ensemble's members disagree more ({before:.2f} -> {now:.2f}) while its "
                "score is flat: the policy is exploiting what the members learnt differently"
            )
    return found


def detect(
    history: Sequence[dict[str, float]],
    checkpoints: Sequence[int] = (),
    window: int = 5,
    flat: float = 0.1,
    rising: float = 0.1,
) -> Diagnosis:
    """Flags of over-optimisation in a run's per-iteration metrics, and where its conservative reward peaked.

    ``checkpoints``: the steps of the run's saved checkpoints. A flag is reported as it stands at the
    end of the run, and ``first_flagged`` is the first iteration at which any flag held (the history
    replayed iteration by iteration, as the trainer checks it while it trains).
    """
    if not history:
        return Diagnosis()
    replayed = (n for n in range(1, len(history) + 1) if _flags(history[:n], window, flat, rising))
    first = next((int(history[n - 1]["step"]) for n in replayed), None)
    metric = next((m for m in CONSERVATIVE if m in history[-1]), None)
    peak_step = peak_value = checkpoint = None
    if metric is not None:
        smooth = _smoothed([h[metric] for h in history], window)
        best = max(range(len(smooth)), key=smooth.__getitem__)
        peak_step, peak_value = int(history[best]["step"]), smooth[best]
        if checkpoints:
            nearest = min(checkpoints, key=lambda s: (abs(s - peak_step), s))
            checkpoint = f"checkpoint-{nearest}"
    return Diagnosis(
        flags=_flags(history, window, flat, rising),
        first_flagged=first,
        peak_step=peak_step,
        peak_value=peak_value,
        conservative_metric=metric,
        peak_checkpoint=checkpoint,
    )


def check(history: Sequence[dict[str, float]], window: int = 5, flat: float = 0.1, rising: float = 0.1) -> list[str]:
    """The flags that hold at the last iteration of ``history`` (what the trainer warns about as it trains)."""
    return _flags(history, window, flat, rising)
