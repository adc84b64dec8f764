"""`rlhf feedback`: the feedback package's commands, plus `generate`, which needs a model.

The feedback package (store, app, import, export) never imports torch or the training code, so
``rlhf feedback serve`` starts in about a second. ``generate`` samples candidates with the training
side's sampler (:mod:`rlhf.candidates`); it is added here, and its module, which loads torch, is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from feedback import cli
from feedback.store import Store


def cmd_generate(args: argparse.Namespace) -> None:
    candidates = importlib.import_module("rlhf.candidates")  # torch and the model stack: only for this command
    settings = candidates.GenerationSettings(
        num_candidates=args.num_candidates,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    report = candidates.generate(
        Store(args.db),
        args.model,
        adapter=args.adapter,
        prompts_path=args.prompts,
        settings=settings,
        batch_size=args.batch_size,
        quantization=args.quantization,
    )
    print(
        f"{report.prompts} prompts, {report.sampled} samples: {report.stored} stored, "
        f"{report.duplicates} duplicates and {report.empty} empty ones dropped"
    )


def add_generate(command: cli.CommandFactory) -> None:
    gen = command("generate", cmd_generate, "sample K candidates per prompt from a model (or adapter) and store them")
    gen.add_argument("--model", required=True, help="base model: hub id, folder, or builtin:tiny")
    gen.add_argument("--adapter", help="a PEFT adapter folder (e.g. an SFT run) to put on the base")
    gen.add_argument("--prompts", help="prompts file (rows with a 'prompt' column); default: every stored prompt")
    gen.add_argument("--num-candidates", type=int, default=4)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    gen.add_argument("--quantization", choices=["none", "4bit", "8bit"], default="none")


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(argv, extensions=[add_generate])
