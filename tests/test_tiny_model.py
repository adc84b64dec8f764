"""The built-in tiny base (rlhf/tiny/model): the committed files are what the build script makes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from rlhf.tiny.build import DEFAULTS, MODEL_DIR, build


def test_the_committed_tiny_model_matches_its_manifest() -> None:
    """Every committed file of the tiny base has the SHA-256 its manifest lists, built with today's defaults."""
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    assert manifest["settings"] == DEFAULTS  # what `build_tiny_model.py --check` rebuilds
    files = {p.name for p in MODEL_DIR.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert files == set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((MODEL_DIR / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.slow
def test_the_tiny_build_is_deterministic_and_check_reports_a_difference(tmp_path: Path) -> None:
    """Two builds with the same settings write the same files (what `--check` relies on), and `--check`
    exits 1 naming the files when a rebuild differs from the committed model (here: a much shorter build)."""
    small = {"documents": 300, "steps": 3, "batch_size": 8}
    first = build(tmp_path / "a", **small)["files"]
    assert build(tmp_path / "b", **small)["files"] == first
    args = [f"--{key}={value}" for key, value in small.items()]
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_tiny_model.py"), "--check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "files differ:" in check.stdout and "model.safetensors" in check.stdout
