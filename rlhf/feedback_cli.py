"""`rlhf feedback`: the feedback package's commands, plus `generate`, which needs a model.

The feedback package (store, app, import, export) never imports torch or the training code, so
``rlhf feedback serve`` starts in about a second. ``generate`` samples candidates with the training
side's sampler (:mod:`rlhf.candidates`); it is added here, and its module, which loads torch, is
imported only when the command runs.

:func:`wait_for_annotations` is the pipeline's human annotation step: it serves this CLI's app and
waits for people to finish.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from feedback import cli, langsmith_sync
from feedback.store import Progress, Store, StoreError


def cmd_generate(args: argparse.Namespace) -> None:
    client = langsmith_sync.client_from_env() if args.langsmith_project else None
    if args.langsmith_project and client is None:
        raise StoreError(
            "--langsmith-project: LangSmith is not configured; set LANGSMITH_API_KEY (and LANGSMITH_ENDPOINT)"
        )
    candidates = importlib.import_module("rlhf.candidates")  # torch and the model stack: only for this command
    settings = candidates.GenerationSettings(
        num_candidates=args.num_candidates,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    store = Store(args.db)
    report = candidates.generate(
        store,
        args.model,
        adapter=args.adapter,
        prompts_path=args.prompts,
        settings=settings,
        batch_size=args.batch_size,
        quantization=args.quantization,
        langsmith_project=args.langsmith_project,
    )
    print(
        f"{report.prompts} prompts, {report.sampled} samples: {report.stored} stored, "
        f"{report.duplicates} duplicates and {report.empty} empty ones dropped"
    )
    if client is not None:
        # One pass now; whatever LangSmith did not take stays in the store for the next sync.
        runs = langsmith_sync.SyncResult()
        langsmith_sync.LangSmithSync(store, client).create_runs(runs)
        print(
            f"LangSmith project {args.langsmith_project!r}: {runs.runs_created} runs created, "
            f"{store.sync_status().runs_pending} pending (rlhf feedback sync or serve creates them)"
        )


def add_generate(command: cli.CommandFactory) -> None:
    gen = command("generate", cmd_generate, "sample K candidates per prompt from a model (or adapter) and store them")
    gen.add_argument("--model", required=True, help="base model: hub id, folder, or builtin:tiny")
    gen.add_argument("--adapter", help="a LoRA adapter folder in PEFT's format (e.g. an SFT run) to put on the base")
    gen.add_argument("--prompts", help="prompts file (rows with a 'prompt' column); default: every stored prompt")
    gen.add_argument("--num-candidates", type=int, default=4)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    gen.add_argument("--quantization", choices=["none", "4bit", "8bit"], default="none")
    gen.add_argument(
        "--langsmith-project",
        help="record each new candidate as a LangSmith run in this project; ratings become feedback on it",
    )


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(argv, extensions=[add_generate])


def wait_for_annotations(
    store: Store, db: str, host: str, port: int, *, timeout: float | None = None, show_progress: bool = True
) -> Progress:
    """Serve the feedback app (``rlhf feedback serve`` on ``db``) and wait until every item has its answers,
    showing progress; the app stops when this returns or fails (after ``timeout`` seconds, if given)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhf", "feedback", "serve", "--db", db, "--host", host, "--port", str(port)]
    )
    print(
        f"\nAnnotate at http://{host}:{port}/ (create accounts with "
        f"`rlhf feedback annotators --db {db} ...`). The pipeline continues when all items are done.\n",
        flush=True,
    )
    started = time.time()
    try:
        progress = store.progress()
        bar = tqdm(total=progress.items, desc="items annotated", unit="item", disable=not show_progress)
        while progress.complete < progress.items:
            if server.poll() is not None:
                raise RuntimeError(f"the feedback app exited with code {server.returncode}")
            if timeout is not None and time.time() - started > timeout:
                raise TimeoutError(f"annotation not finished after {timeout}s: {progress}")
            time.sleep(2)
            progress = store.progress()
            bar.update(progress.complete - bar.n)
        bar.close()
        return progress
    finally:
        server.terminate()
        server.wait(timeout=30)
