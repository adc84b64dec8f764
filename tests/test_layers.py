"""The layers import in one direction: rlhf.core <- feedback <- the rest of rlhf (models, stages, CLI)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FEEDBACK_MODULES = ["feedback.app", "feedback.cli", "feedback.export", "feedback.importer", "feedback.store"]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_feedback_imports_nothing_of_rlhf_but_its_core() -> None:
    for path in sorted((ROOT / "feedback").rglob("*.py")):
        outside = {m for m in _imports(path) if m.split(".")[0] == "rlhf" and not m.startswith("rlhf.core")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    allowed_third_party = {"datasets"}  # read_file, for CSV and Parquet files only
    for path in sorted((ROOT / "rlhf" / "core").rglob("*.py")):
        for module in _imports(path):
            top = module.split(".")[0]
            assert (
                top in sys.stdlib_module_names
                or top == "__future__"
                or module.startswith("rlhf.core")
                or (top in allowed_third_party)
            ), f"{path.relative_to(ROOT)} imports {module}"


def test_importing_the_feedback_app_and_cli_loads_no_torch() -> None:
    code = (
        "import json, sys\n"
        f"for name in {FEEDBACK_MODULES!r}: __import__(name)\n"
        "from rlhf import cli\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'rlhf': sorted(m for m in sys.modules if m.startswith('rlhf'))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    assert set(loaded["rlhf"]) <= {
        *("rlhf", "rlhf.cli", "rlhf.core", "rlhf.core.errors", "rlhf.core.options", "rlhf.core.rows")
    }


def test_rlhf_feedback_commands_other_than_generate_load_no_torch(tmp_path: Path) -> None:
    """`rlhf feedback ...` is the one entry point, and only `generate` needs the model stack."""
    db = f"sqlite:///{tmp_path / 'f.db'}"
    code = (
        "import sys\n"
        "from rlhf.cli import main\n"
        f"assert main(['feedback', 'migrate', '--db', {db!r}]) == 0\n"
        f"assert main(['feedback', 'progress', '--db', {db!r}]) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout
