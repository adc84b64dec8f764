"""`rlhf data`: look at data before a long run.

* ``rlhf data tiny --out DIR`` writes the built-in task's sets as JSONL (the formats every stage
  reads), so users can see and copy them.
* ``rlhf data check --kind sft|preference|unpaired|prompt --dataset PATH [--columns COLUMN=NAME,...]``
  reads a dataset as the stages read it (converting Alpaca and ShareGPT rows, renaming columns),
  validates it with the same checks, and prints what it converted and its size per split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from rlhf import data
from rlhf_core.convert import parse_columns
from rlhf_core.options import ArgumentParser
from rlhf_core.rows import CHECKS

TINY_SETS = {"sft": "builtin:tiny/sft", "pairs": "builtin:tiny/pairs", "prompts": "builtin:tiny/prompts"}


def write_tiny(out: Path) -> list[Path]:
    written = []
    for name, dataset in TINY_SETS.items():
        for split in ("train", "test"):
            loaded = data.load_split(dataset, split)
            assert loaded is not None
            path = out / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in loaded[0]))
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="rlhf data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("tiny", help="write the built-in tiny task's datasets as JSONL")
    tiny.add_argument("--out", type=Path, required=True, help="folder to write sft/, pairs/, prompts/ into")
    check = commands.add_parser("check", help="validate a dataset as a stage would")
    check.add_argument("--kind", choices=sorted(CHECKS), required=True, help="what the dataset is for")
    check.add_argument("--dataset", required=True, help="file, folder, hub id or builtin:... name")
    check.add_argument("--dataset_config", help="configuration name (hub datasets)")
    check.add_argument(
        "--columns", nargs="+", default=[], help="columns under other names: COLUMN=NAME pairs, as the stages take"
    )
    args = parser.parse_args(argv)
    if args.command == "tiny":
        for path in write_tiny(args.out):
            print(path)
        return
    columns = parse_columns(args.columns)
    for split in ("train", "test"):
        loaded = data.load_rows(args.dataset, split, args.kind, args.dataset_config, columns)
        if loaded is not None:
            rows, _, conversion = loaded
            read_as = f" (read as {conversion.describe()})" if conversion.describe() else ""
            print(f"{args.dataset} [{split}]: {len(rows)} rows, valid {args.kind} data{read_as}")
