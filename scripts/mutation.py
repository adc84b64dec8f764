"""Mutation testing of the modules whose correctness is the product, one module at a time (mutmut).

    python scripts/mutation.py                      # every module in MODULES, one after another
    python scripts/mutation.py rlhf/ppo/losses.py   # one module (or several)
    python scripts/mutation.py --max-children 1     # leave a core free on a shared machine
    python scripts/mutation.py rlhf/merging.py --mutants 'rlhf.merging.x_verify_merge__mutmut_*'
                                                    # only these mutants (names or globs; counted alone)

For each module mutmut copies ``rlhf/`` and ``feedback/`` into ``mutants/`` with that one file
mutated (every mutant behind a switch), runs the module's tests once to learn which test calls
which function, then for each mutant runs only the tests that call the mutated function (``-x``,
in a forked child). A mutant that every one of them passes *survived*: a change to the code that
no test notices. Each survivor must be killed by a test or explained, one line each, as an
equivalent mutant in docs/development.md (a ``- `NAME`: why`` line); this script reads those lines,
prints the unexplained survivors' diffs and exits 1 while any is left.

Only the fast tests that target a module run (a mutant run repeats them for every mutant): the
stage tests that train models would take hours. Shared settings (which folders are copied, the
pytest options) are in pyproject.toml ``[tool.mutmut]``; the per-module choice is here, because
mutmut itself takes one test selection for a whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "development.md"

# module -> the pytest arguments selecting its fast tests (files, node ids, -k / --deselect)
MODULES: dict[str, tuple[str, ...]] = {
    "rlhf/ppo/losses.py": ("tests/test_ppo_losses.py", "tests/test_ppo_losses_mutants.py"),
    "rlhf/policy/packing.py": ("tests/test_packing.py", "tests/test_packing_mutants.py"),
    "rlhf/policy/logprobs.py": ("tests/test_ppo_losses.py", "tests/test_logprobs_mutants.py"),
    "rlhf/merging.py": ("tests/test_merging.py", "tests/test_merging_mutants.py"),
    "rlhf/selection.py": ("tests/test_selection.py", "tests/test_selection_mutants.py"),
    "rlhf/evaluation.py": ("tests/test_evaluation.py", "tests/test_evaluation_mutants.py"),
    "feedback/export.py": (
        "tests/test_feedback_export.py",
        "tests/test_feedback_export_mutants.py",
        "--deselect",
        "tests/test_feedback_export.py::test_pairs_exported_from_a_simulated_annotator_train_with_rlhf_reward",
    ),
    "feedback/agreement.py": ("tests/test_feedback_agreement.py", "tests/test_feedback_agreement_mutants.py"),
    "rlhf/ensemble.py": (
        "tests/test_ensemble.py",
        "tests/test_ensemble_mutants.py",
        "-k",
        "aggregations or standardise or manifest or mutants",  # not the tests that train reward models
    ),
    "rlhf/overoptimisation.py": ("tests/test_overoptimisation.py", "tests/test_overoptimisation_mutants.py"),
}
COLUMNS = ("module", "mutants", "killed", "survived", "equivalent", "unexplained", "timeout", "no tests", "minutes")
EQUIVALENT = re.compile(r"^- `(\S+__mutmut_\d+)`", re.MULTILINE)


def explained() -> set[str]:
    """Mutant names that docs/development.md explains as equivalent (its ``- `NAME`: why`` lines)."""
    return set(EQUIVALENT.findall(DOC.read_text())) if DOC.is_file() else set()


def run_one(module: str, max_children: int, mutants: list[str]) -> None:
    """In a fresh process: point mutmut's configuration at one module and its tests, run it, show the survivors."""
    from mutmut.configuration import config

    settings = config()  # read from pyproject.toml [tool.mutmut]; the per-module part is set here
    settings.only_mutate = [module]
    settings.pytest_add_cli_args_test_selection = list(MODULES[module])
    from mutmut.__main__ import cli

    cli(["run", "--max-children", str(max_children), *mutants], standalone_mode=False)
    equivalent = explained()
    for name, status in statuses(module).items():  # each unexplained survivor's diff, while mutants/ holds it
        if status == "survived" and name not in equivalent:
            cli(["show", name], standalone_mode=False)


def statuses(module: str) -> dict[str, str]:
    """Each tested mutant's status (mutmut's names: killed, survived, timeout, no tests, ...), from mutants/.

    Mutants a ``--mutants`` run left untested ("not checked") are left out.
    """
    from mutmut.stats import status_by_exit_code

    meta = json.loads((ROOT / "mutants" / f"{module}.meta").read_text())
    found = {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}
    return {name: status for name, status in found.items() if status != "not checked"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--mutants",
        nargs="+",
        default=[],
        metavar="NAME",
        help="only these mutants (mutmut names or globs, e.g. 'rlhf.merging.x_verify_merge__mutmut_*'); "
        "the table then counts them alone",
    )
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.run_one:
        run_one(args.run_one, args.max_children, args.mutants)
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"not a mutation-tested module: {', '.join(unknown)} (choose from {', '.join(MODULES)})")
    if args.mutants and len(args.modules) != 1:
        parser.error("--mutants: name the one module they belong to")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first on the path; the worktree must not shadow it
    equivalent = explained()
    rows, unexplained = [], []
    for module in args.modules or list(MODULES):
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # one module's mutants at a time
        start = time.monotonic()
        cmd = [sys.executable, __file__, "--run-one", module, "--max-children", str(args.max_children)]
        cmd += ["--mutants", *args.mutants] if args.mutants else []
        subprocess.run(cmd, env=env, check=True)
        by_status = statuses(module)
        survivors = sorted(name for name, status in by_status.items() if status == "survived")
        left = [name for name in survivors if name not in equivalent]
        unexplained += left
        counts = [sum(s == status for s in by_status.values()) for status in ("killed", "survived")]
        rows.append(
            (
                module,
                len(by_status),
                *counts,
                len(survivors) - len(left),
                len(left),
                sum(s == "timeout" for s in by_status.values()),
                sum(s == "no tests" for s in by_status.values()),
                round((time.monotonic() - start) / 60, 1),
            )
        )
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    if unexplained:
        print(f"\n{len(unexplained)} survivors neither killed nor explained in {DOC.relative_to(ROOT)}:")
        print("\n".join(f"  {name}" for name in unexplained))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
