"""Mutation score of the test suite on chosen modules, with mutmut (a benchmark, not in CI).

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python scripts/mutation.py                       # domain/, its fast pure tests
    .venv/bin/python scripts/mutation.py --source projections/occupancy.py \\
        --tests tests/test_view_queries.py tests/test_order_insensitivity.py
    .venv/bin/python scripts/mutation.py --source projections/roster.py \\
        --tests tests/test_roster.py --mutants 'projections.roster.*__mutmut_*[05]'  # 1 in 5

mutmut mutates a copy (it writes `mutants/` beside the code it copies), so this script works on a
fresh copy of the tracked files in a temporary directory and never touches the worktree. It
prints the score (killed / (killed + survived); mutants no selected test reaches count as
survived) and every surviving mutant's diff, for a reader to judge which matter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Pure, fast tests of domain/ (no database): a mutant is run against those that reach it.
DOMAIN_TESTS = [
    "tests/test_deliveries.py",
    "tests/test_interpret.py",
    "tests/test_ledger.py",
    "tests/test_presence.py",
    "tests/test_roster.py",
    "tests/test_order_insensitivity.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", nargs="+", default=["domain/"], help="what to mutate")
    parser.add_argument("--tests", nargs="+", default=DOMAIN_TESTS, help="the tests to run")
    parser.add_argument("--children", type=int, default=2, help="mutants run at once")
    parser.add_argument(
        "--mutants",
        nargs="+",
        default=[],
        help="only the mutants these names or globs match (mutmut's names: "
        "'projections.roster.x_page__mutmut_*' one function, '*__mutmut_*[05]' one in five)",
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    args = parser.parse_args()
    mutmut = Path(sys.executable).with_name("mutmut")
    if not mutmut.exists():
        print("mutmut is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rollcall-mutation-") as scratch:
        copy = Path(scratch) / "rollcall"
        _copy_tracked(copy)
        with (copy / "pyproject.toml").open("a") as pyproject:
            pyproject.write(
                "\n[tool.mutmut]\n"
                f"source_paths = {json.dumps(args.source)}\n"
                f"pytest_add_cli_args_test_selection = {json.dumps(args.tests)}\n"
                'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
            )
        env = {**os.environ, "PYTHONPATH": str(copy)}
        started = time.monotonic()
        run = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.children), *args.mutants],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        if run.returncode != 0:
            print(run.stdout[-4000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
            return run.returncode
        subprocess.run([str(mutmut), "export-cicd-stats"], cwd=copy, env=env, check=True)
        stats = json.loads((copy / "mutants" / "mutmut-cicd-stats.json").read_text())
        results = subprocess.run(
            [str(mutmut), "results"], cwd=copy, env=env, capture_output=True, text=True, check=True
        ).stdout
        survivors = [
            line.split(":")[0].strip()
            for line in results.splitlines()
            if line.strip().endswith(("survived", "no tests"))
        ]
        diffs = {
            name: subprocess.run(
                [str(mutmut), "show", name], cwd=copy, env=env, capture_output=True, text=True
            ).stdout
            for name in survivors
        }
    killed, survived = stats.get("killed", 0), stats.get("survived", 0) + stats.get("no_tests", 0)
    score = killed / (killed + survived) if killed + survived else 0.0
    figures = {
        "source": args.source,
        "tests": args.tests,
        "mutants": args.mutants,
        "seconds": round(elapsed),
        "score": round(score, 3),
        **stats,
    }
    if args.json:
        print(json.dumps({**figures, "survivors": survivors}, indent=2))
    else:
        print(
            f"mutation score on {', '.join(args.source)}: {score:.1%} "
            f"({killed} killed, {survived} survived or unreached, "
            f"{stats.get('timeout', 0)} timed out, {stats.get('suspicious', 0)} suspicious) "
            f"in {elapsed:.0f} s with {len(args.tests)} test files"
            + (f" (mutants {' '.join(args.mutants)})" if args.mutants else "")
        )
        for name in survivors:
            print(f"\n--- {name}\n{diffs[name].strip()}")
    return 0


def _copy_tracked(destination: Path) -> None:
    """The files git tracks (as they are in the worktree now), nothing else."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


if __name__ == "__main__":
    sys.exit(main())
