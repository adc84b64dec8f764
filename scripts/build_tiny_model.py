"""Build the built-in tiny base model (rlhf/tiny/model) from the task's own text. Nothing is downloaded.

    python scripts/build_tiny_model.py                 # rebuild rlhf/tiny/model (~4.5 min, 2 CPU cores)
    python scripts/build_tiny_model.py --check         # rebuild into a temp folder, compare with the committed files
    python scripts/build_tiny_model.py --out DIR --steps 100   # a quick variant elsewhere

The result is deterministic for a given torch version and thread count; manifest.json records the
settings, the final pre-training loss and a SHA-256 of every file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from rlhf.tiny.build import DEFAULTS, MODEL_DIR, build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="output folder (default: the packaged model)")
    parser.add_argument("--check", action="store_true", help="rebuild into a temp folder and compare file hashes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in DEFAULTS}
    if not args.check:
        manifest = build(args.out, **overrides)
        print(json.dumps({k: manifest[k] for k in ("parameters", "final_loss", "build_seconds")}))
        return 0
    committed = json.loads((MODEL_DIR / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(Path(tmp), **overrides)
    differing = sorted(k for k in committed["files"] if committed["files"][k] != manifest["files"].get(k))
    print("identical to the committed model" if not differing else f"files differ: {differing}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
