"""`rlhf report`: one self-contained HTML page that says at a glance whether a run worked, and what ran.

Reads a pipeline run folder (``sft/``, ``reward/``, ``ppo/``, ``eval/``; any may be missing; a run with
``--rounds`` keeps reward, ppo and the annotation steps in ``round-N/``, and gets a section with one
line and curve point per round) and writes ``report.html`` beside them, with every plot embedded in
the page (base64 PNG: the file can be moved or mailed alone) and also saved into ``report/``.
The verdict at the top compares the PPO and SFT policies on held-out prompts (gold judge where the
task has one, else the reward model); a box follows when the RL run's over-optimisation diagnosis
(:mod:`rlhf.overoptimisation`) flagged it, naming the checkpoint to export instead. Then the RL
diagnostics from the run's logged history (KL, entropy, clip fraction, value explained variance, the
reward and each ensemble member), and each stage's main hyperparameters from its ``rlhf_config.yaml``.
Model output is untrusted text: every string is HTML-escaped.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rlhf.report.compare import build_comparison
from rlhf.report.page import build_report, verdict
from rlhf_core.options import ArgumentParser

__all__ = ["build_comparison", "build_report", "main", "verdict"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="rlhf report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run_dir",
        required=True,
        nargs="+",
        help="pipeline run folder (with sft/, reward/, ppo/, eval/); several (pipeline or PPO run folders): "
        "a page comparing them",
    )
    parser.add_argument("--samples", type=int, default=10, help="sample answers to show")
    parser.add_argument("--out", help="comparison page to write (several runs; default: comparison.html here)")
    args = parser.parse_args(argv)
    if len(args.run_dir) == 1:
        print(build_report(args.run_dir[0], args.samples))
    else:
        print(build_comparison(args.run_dir, args.out or "comparison.html"))
