"""The main job in QLoRA (the tiny recipe as shipped) against the same job in full precision, on this machine.

    python benchmarks/bench_precision.py                 # both pipelines, one after the other (~5-6 min on 2 cores)
    python benchmarks/bench_precision.py --repeats 2     # alternate them twice: machines are noisy

Why. The tiny recipe used to train in fp32 because 4-bit was believed "several times slower" on CPU;
the main job is QLoRA now (sft, reward and ppo on a 4-bit NF4 double-quantized base), and this script
keeps the belief measured: it runs ``rlhf pipeline --recipe recipes/tiny`` as shipped and with every
training stage's ``quantization`` set to ``none`` (the recipe folder copied, the YAML loaded and
written back with that one key changed), each in its own process, alternating, and prints wall
time, peak RSS and the evaluation's figures for both, with the QLoRA/fp32 time ratio.

Run it on an idle machine: two torch processes on 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.results import EvalResult

REPO = Path(__file__).resolve().parent.parent
TRAINING_STAGES = ("sft", "reward", "ppo")


def launch_pipeline(recipe: Path, output_dir: Path, overrides: Sequence[str]) -> tuple[float, float]:
    """`rlhf pipeline` in a child process (log in `output_dir/pipeline.log`): wall seconds, its peak RSS (MiB)."""
    command = [sys.executable, "-m", "rlhf", "pipeline", "--recipe", str(recipe), "--output_dir", str(output_dir)]
    command += overrides
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "pipeline.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen([*command, "--disable_tqdm", "true"], stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS (KiB on Linux)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def run_pipeline(recipe: Path, output_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One pipeline in a child process: wall time, the child's peak RSS, stage times and evaluation figures."""
    wall, peak_rss_mib = launch_pipeline(recipe, output_dir, overrides)
    evaluation = EvalResult.read(output_dir / "eval")
    stages = {  # the stages this route ran (an offline route has dpo or kto instead of ppo)
        stage: json.loads((output_dir / stage / "done.json").read_text())["seconds"]
        for stage in ("sft", "generate", "annotate", "reward", "ppo", "dpo", "kto", "eval", "export")
        if (output_dir / stage / "done.json").is_file()
    }
    return {
        "wall_seconds": wall,
        "peak_rss_mib": peak_rss_mib,
        "stages": stages,
        "gold_sft": evaluation.sft.gold,
        "gold_ppo": evaluation.ppo.gold,
        "gold_win_rate": evaluation.win_rate["gold"].win_rate,
        "kl": evaluation.kl_ppo_to_sft,
        "reward_accuracy": evaluation.reward_model.accuracy if evaluation.reward_model else None,
    }


def render(results: dict[str, list[dict[str, Any]]]) -> str:
    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    def stage(side: str, name: str) -> float:
        return statistics.median(r["stages"][name] for r in results[side])

    rows = [("", "QLoRA (4-bit NF4)", "fp32", "ratio")]
    wall_q, wall_f = median("qlora", "wall_seconds"), median("fp32", "wall_seconds")
    rows.append(("wall time (median)", f"{wall_q:.0f} s", f"{wall_f:.0f} s", f"{wall_q / wall_f:.2f}x"))
    for name in ("sft", "reward", "ppo"):
        q, f = stage("qlora", name), stage("fp32", name)
        rows.append((f"  {name}", f"{q:.0f} s", f"{f:.0f} s", f"{q / f:.2f}x"))
    rss = [max(r["peak_rss_mib"] for r in results[side]) for side in ("qlora", "fp32")]
    rows.append(("peak RSS (largest run)", f"{rss[0]:.0f} MiB", f"{rss[1]:.0f} MiB", f"{rss[0] / rss[1]:.2f}x"))
    for key, label in (
        ("gold_sft", "gold score, SFT"),
        ("gold_ppo", "gold score, PPO"),
        ("gold_win_rate", "PPO gold win rate"),
        ("kl", "KL(PPO || SFT), nats/answer"),
        ("reward_accuracy", "reward-model accuracy"),
    ):
        rows.append((label, f"{median('qlora', key):.3f}", f"{median('fp32', key):.3f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    runs = len(results["qlora"])
    return f"rlhf pipeline --recipe recipes/tiny, {runs} run(s) each, alternating\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "tiny")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, alternating")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    # the same recipe, its training stages loading the base unquantized for the fp32 side
    variants = {"qlora": [], "fp32": [arg for s in TRAINING_STAGES for arg in (f"--{s}.quantization", "none")]}
    results: dict[str, list[dict[str, Any]]] = {"qlora": [], "fp32": []}
    for repeat in range(args.repeats):
        for side, overrides in variants.items():
            print(f"[{time.strftime('%H:%M:%S')}] {side} run {repeat + 1}/{args.repeats} ...", flush=True)
            result = run_pipeline(args.recipe, workdir / f"{side}-{repeat}", overrides)
            results[side].append(result)
            print(f"  {result['wall_seconds']:.0f} s, stages {result['stages']}", flush=True)
    print(render(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
