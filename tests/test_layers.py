"""The layers import in one direction: rlhf_core <- feedback <- rlhf (models, stages, CLI).

``rlhf_core`` is a top-level package, so the two packages above it do not depend on each other both ways:
``feedback`` imports nothing of ``rlhf``, and the core neither of them.
"""

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


def test_feedback_imports_nothing_of_rlhf() -> None:
    for path in sorted((ROOT / "feedback").rglob("*.py")):
        upward = {m for m in _imports(path) if m.split(".")[0] == "rlhf"}
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}: feedback stands on rlhf_core only"


# The training side, bottom up: a module imports from its own floor and the floors below, never above (a new
# module must be placed here). What ARCHITECTURE.md draws.
RLHF_FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations: options, parsing, results, run folders, models, data, sharding",
        (
            "rlhf.arguments",
            "rlhf.config",
            "rlhf.results",
            "rlhf.run_paths",
            "rlhf.runs",
            "rlhf.models",
            "rlhf.data",
            "rlhf.tiny",
            "rlhf.sharding",
            "rlhf.distributed",
            "rlhf.ensemble",
            "rlhf.overoptimisation",
            "rlhf.selection",
            "rlhf.annotators",
        ),
    ),
    ("the policy service", ("rlhf.policy",)),
    ("what samples or merges a policy", ("rlhf.evaluation", "rlhf.candidates", "rlhf.merging")),
    ("the RL trainer", ("rlhf.ppo",)),
    (
        "stages, orchestration, report, entry points",
        ("rlhf.stages", "rlhf.report", "rlhf.feedback_cli", "rlhf.data_cli", "rlhf.cli", "rlhf.__main__"),
    ),
]


def _floor(module: str) -> int | None:
    for number, (_, prefixes) in enumerate(RLHF_FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    return None


def test_the_training_side_imports_only_downward() -> None:
    """RL, evaluation and candidate generation stand on ``rlhf.policy``, which stands on none of them; the
    stages stand on everything, and nothing below imports a stage."""
    for path in sorted((ROOT / "rlhf").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "rlhf":
            continue
        own = _floor(module)
        assert own is not None, f"{module} is on no floor of RLHF_FLOORS: place it"
        for imported in _imports(path):
            floor = _floor(imported)
            assert floor is None or floor <= own, (
                f"{module} ({RLHF_FLOORS[own][0]}) imports {imported} ({RLHF_FLOORS[floor][0]}): a floor above it"
            )


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    """Neither ``feedback`` nor ``rlhf``: the core is what both stand on."""
    allowed = {"__future__", "rlhf_core", "datasets"}  # datasets: read_file, for CSV and Parquet files only
    paths = sorted((ROOT / "rlhf_core").rglob("*.py"))
    assert paths, "rlhf_core/ holds no modules"
    for path in paths:
        for module in _imports(path):
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top in allowed, f"{path.relative_to(ROOT)} imports {module}"


def test_importing_the_feedback_app_and_cli_loads_no_torch() -> None:
    code = (
        "import json, sys\n"
        "def rlhf(): return sorted(m for m in sys.modules if m.split('.')[0] == 'rlhf')\n"
        f"for name in {FEEDBACK_MODULES!r}: __import__(name)\n"
        "by_feedback = rlhf()\n"
        "from rlhf import cli\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'by_feedback': by_feedback, 'by_cli': rlhf()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    assert loaded["by_feedback"] == []
    assert set(loaded["by_cli"]) <= {"rlhf", "rlhf.cli"}


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
