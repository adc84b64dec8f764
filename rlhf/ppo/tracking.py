"""Where the RL trainer's metrics go: ``metrics.jsonl`` every iteration, accelerate's trackers, the progress bar.

Only the first process writes; the other processes compute the same (all-reduced) metrics and log nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker
from tqdm.auto import tqdm

STEP_METRICS_FILE = "metrics.jsonl"
TRACKING_PROJECT = "rlhf"  # the project of trackers that log to a service (wandb, trackio, mlflow, ...)


def start_trackers(names: list[str], output_dir: Path) -> list[GeneralTracker]:
    """Accelerate's trackers for ``report_to`` (checked installed by the config), started; first process only.

    The tracker classes, not an ``Accelerator``: its ``end_training`` destroys the process group, which
    the stage still needs after training (the adapters are gathered, the policy evaluated), and the
    trainer prepares nothing else with it (see :mod:`rlhf.distributed`). Trackers that write files
    (TensorBoard) write under ``output_dir/runs``; the others log to the project ``rlhf``. The run's
    configuration is in the run folder (``rlhf_config.yaml``), not sent to the trackers.
    """
    trackers = []
    for name in names:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        if tracker_class.requires_logging_directory:
            tracker = tracker_class("runs", str(output_dir))
        else:
            tracker = tracker_class(TRACKING_PROJECT)
        # its methods ask accelerate's process state whether this is the main process, which sets that state
        # up (joining the process group torchrun started); its logger refuses to run without it
        tracker.start()
        trackers.append(tracker)
    return trackers


def record_step(
    metrics: dict[str, float],
    step: int,
    output_dir: Path,
    trackers: list[GeneralTracker],
    logging_steps: int,
    bar: tqdm,
) -> None:
    """One iteration's metrics: a line of ``metrics.jsonl`` (all of them, every step, which a resume trims
    back to its checkpoint), the trackers every ``logging_steps`` and the headline figures on the bar."""
    with (output_dir / STEP_METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(metrics) + "\n")
    if step % logging_steps == 0:
        for tracker in trackers:
            tracker.log({k: v for k, v in metrics.items() if k != "step"}, step=step)
    postfix = {"score": f"{metrics['objective/score']:.2f}"}
    if "objective/kl" in metrics:
        postfix["kl"] = f"{metrics['objective/kl']:.2f}"
    if "gold/score" in metrics:
        postfix["gold"] = f"{metrics['gold/score']:.2f}"
    bar.set_postfix(postfix)
