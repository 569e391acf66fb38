"""Build the flywheel's data set from real third-party code in this environment — the standard library
(its tests left out) and a few installed packages — with `flywheel bootstrap`'s builder, and print the
counts per task, level and side, and the time each step took.

    .venv/bin/python bench/build_real_dataset.py [--packages click jinja2 …] [--out DIR] [--baseline]

The trees are copied (Python files only) under one folder, so each file's path names its package and
the split by file holds across packages. ``--out DIR`` writes each task's examples as JSONL
(``severity.jsonl``, ``explanation.jsonl``, ``find.jsonl``) for a benchmark to read. ``--baseline``
also times plain ``ruff check`` and ``bandit -r`` over the same copy, for the builder's overhead.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from bot.models import ExampleSplit, Severity, Task
from flywheel import data
from flywheel.bootstrap.dataset import DEFAULT_BALANCE, Report, analyze, examples_for

PACKAGES = [
    "click",
    "jinja2",
    "httpx",
    "requests",
    "urllib3",
    "yaml",
    "starlette",
    "huey",
    "redis",
    "alembic",
]
STDLIB_LEFT_OUT = {"test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "__pycache__"}
HELDOUT_SHARE = 0.2  # the flywheel's default (REVIEWBOT_FLYWHEEL_HELDOUT_SHARE)


def copy_tree(source: Path, target: Path, left_out: Iterable[str] = ()) -> int:
    skip = set(left_out)
    count = 0
    for path in source.rglob("*.py"):
        relative = path.relative_to(source)
        if skip & set(relative.parts[:-1]) or path.is_symlink():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)
        count += 1
    return count


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def copy_sources(tree: Path, packages: Iterable[str], stdlib: Iterable[str] | None = None) -> dict[str, int]:
    """Copy the standard library (only the top-level ``stdlib`` modules and packages when given) and
    the installed ``packages`` under ``tree``, Python files only; the number of files per source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if stdlib is None:
        copied = {"stdlib": copy_tree(root, tree / "stdlib", STDLIB_LEFT_OUT)}
    else:
        copied = {"stdlib": 0}
        for name in stdlib:
            if (root / name).is_dir():
                copied["stdlib"] += copy_tree(root / name, tree / "stdlib" / name, STDLIB_LEFT_OUT)
            elif (root / f"{name}.py").is_file():
                (tree / "stdlib").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / f"{name}.py", tree / "stdlib" / f"{name}.py")
                copied["stdlib"] += 1
    for name in packages:
        where = package_dir(name)
        if where is None:
            print(f"{name}: not installed, left out")
            continue
        copied[name] = copy_tree(where, tree / name)
    return copied


def print_counts(task: Task, report: Report) -> None:
    labels = ["chunks"] if task == Task.FIND else [level.value for level in Severity]
    print(
        f"\n{task.value}: {report.total} examples ({report.duplicates} duplicates, "
        f"{report.unusable} unusable, {report.capped} capped to balance)"
    )
    print(f"  {'label':<9} {'train':>7} {'held out':>9} {'total':>7}")
    for label in [*labels, "total"]:
        cells = [
            sum(report.kept[side].values()) if label == "total" else report.kept[side][label]
            for side in (ExampleSplit.TRAIN, ExampleSplit.HELDOUT)
        ]
        print(f"  {label:<9} {cells[0]:>7} {cells[1]:>9} {sum(cells):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", nargs="*", default=PACKAGES)
    parser.add_argument("--balance", type=float, default=DEFAULT_BALANCE)
    parser.add_argument("--out", type=Path, help="folder for severity.jsonl, explanation.jsonl, find.jsonl")
    parser.add_argument("--baseline", action="store_true", help="also time plain ruff and bandit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="real-dataset-") as folder:
        tree = Path(folder)
        copied = copy_sources(tree, args.packages)
        print("files:", ", ".join(f"{name} {count}" for name, count in copied.items()))
        started = time.monotonic()
        analysis = analyze(tree)
        analyzed_s = time.monotonic() - started
        report = analysis.report
        print(
            f"\nseverity table v{analysis.table.version}; {report.files} files analyzed "
            f"in {analyzed_s:.1f} s ({report.files / analyzed_s:.1f} files/s); "
            f"{len(report.unparsed)} could not be parsed"
        )
        print("findings:", dict(report.findings), f"labelled: {len(analysis.labelled)}")
        print(
            "skipped (loudest rules):",
            report.skipped.most_common(10),
            f"total {sum(report.skipped.values())}",
        )
        for task in (Task.SEVERITY, Task.EXPLANATION, Task.FIND):
            clock = time.monotonic()
            built = examples_for(analysis, task, heldout_share=HELDOUT_SHARE, balance=args.balance)
            print_counts(task, built.report)
            print(f"  built in {time.monotonic() - clock:.1f} s")
            if args.out:
                count = data.write_jsonl(args.out / f"{task.value}.jsonl", built.examples)
                print(f"  {count} written to {args.out / f'{task.value}.jsonl'}")
        if args.baseline:
            clock = time.monotonic()
            ruff = [
                sys.executable,
                "-m",
                "ruff",
                "check",
                "--isolated",
                "--no-cache",
                "--exit-zero",
                f"--select={','.join(analysis.table.ruff_select)}",
                "--output-format=json",
                str(tree),
            ]
            subprocess.run(ruff, capture_output=True, check=True)
            bandit = [sys.executable, "-m", "bandit", "-r", "--format=json", "--quiet", str(tree)]
            subprocess.run(bandit, capture_output=True, check=False)
            plain_s = time.monotonic() - clock
            print(
                f"\nbaseline: plain ruff + bandit one after the other {plain_s:.1f} s; "
                f"analysis {analyzed_s:.1f} s, ratio {analyzed_s / plain_s:.2f}"
            )


if __name__ == "__main__":
    main()
