"""Benchmark: ``parse_diff`` against plain ``unidiff.PatchSet`` parsing, on a large real diff.

    .venv/bin/python bench/bench_diff.py

Downloads the sdists of two consecutive Django releases once (pip, into a cache folder under the
system temp dir), unpacks them, diffs the two trees with ``git diff --no-index`` and times both
parsers on the same text, best of a few runs.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from unidiff.patch import PatchSet

from bot.diff import parse_diff

OLD, NEW = "5.0", "5.1"
RUNS = 5
CACHE = Path(tempfile.gettempdir()) / "reviewbot-bench-diff"


def unpack(version: str, tree: Path) -> None:
    """Django ``version``'s sdist unpacked into ``tree``; downloaded once into the cache."""
    if tree.is_dir():
        return
    archives = CACHE / "sdists"
    pattern = f"[Dd]jango-{version}.tar.gz"
    if not any(archives.glob(pattern)):
        print(f"downloading the Django {version} sdist from PyPI ...", flush=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*command, "--dest", str(archives), f"django=={version}"], capture_output=True, text=True
        )
        if done.returncode or not any(archives.glob(pattern)):
            sys.exit(f"could not download Django {version} with pip (offline?):\n{done.stderr.strip()}")
    staging = Path(tempfile.mkdtemp(dir=CACHE))  # unpack beside the tree and rename: no half trees cached
    with tarfile.open(next(archives.glob(pattern))) as archive:
        archive.extractall(staging, filter="data")
    (top,) = staging.iterdir()  # the sdist's one top folder, e.g. django-5.1/
    tree.parent.mkdir(parents=True, exist_ok=True)
    top.rename(tree)
    shutil.rmtree(staging)


def real_diff() -> str:
    pair = CACHE / f"{OLD}-{NEW}"
    unpack(OLD, pair / "a")
    unpack(NEW, pair / "b")
    # Run inside the pair folder with --no-prefix, so the headers read "a/django/... b/django/..." as usual.
    command = ["git", "diff", "--no-index", "--no-color", "--no-ext-diff", "--no-prefix", "a", "b"]
    done = subprocess.run(command, cwd=pair, capture_output=True)
    if done.returncode not in (0, 1):  # 1: the trees differ
        sys.exit(f"git diff failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode("utf-8", errors="replace")


def best_time(parse: Callable[[str], object], text: str) -> float:
    times = []
    for _ in range(RUNS):
        gc.collect()  # each run starts from the same heap, not from the previous run's garbage
        start = time.perf_counter()
        parse(text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    CACHE.mkdir(exist_ok=True)
    text = real_diff()
    megabytes = len(text.encode()) / 1e6
    lines = text.count("\n")
    baseline, ours = PatchSet(text), parse_diff(text)
    files, hunks = len(baseline), sum(len(file) for file in baseline)
    reviewed, skipped = len(ours.files), len(ours.skipped)
    del baseline, ours  # a big live heap would slow the timed runs' garbage collection
    print(f"Django {OLD} -> {NEW} sdists, git diff --no-index (cache: {CACHE})")
    print(f"  diff            {megabytes:.1f} MB, {files:,} files, {hunks:,} hunks, {lines:,} lines")
    print(f"  parse_diff      {reviewed:,} files to review, {skipped:,} skipped")
    seconds = {"parse_diff": best_time(parse_diff, text), "unidiff.PatchSet": best_time(PatchSet, text)}
    for name, took in seconds.items():
        print(
            f"  {name:<16}{took:7.3f} s   {megabytes / took:6.1f} MB/s   {lines / took:>10,.0f} lines/s"
            f"   (best of {RUNS})"
        )
    print(f"  ours/baseline   {seconds['parse_diff'] / seconds['unidiff.PatchSet']:.2f}x the time")


if __name__ == "__main__":
    main()
