"""Diffs of a local git repository, for ``reviewbot review``."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(Exception):
    """A git command failed; the message carries git's own words."""


def _git(repo: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise GitError("git is not installed or not on PATH") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {' '.join(args)}: {message[-1] if message else f'exit {done.returncode}'}")
    return done.stdout


def default_base(repo: Path) -> str:
    """``main`` or ``master``, whichever the repository has."""
    for name in ("main", "master"):
        if (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                capture_output=True,
            ).returncode
            == 0
        ):
            return name
    raise GitError(f"{repo}: no --base given and the repository has no main or master branch")


def diff_range(repo: Path, base: str, head: str) -> bytes:
    """The changes of ``head`` since it left ``base`` (``base...head``: the merge base to head),
    as a unified diff with renames detected."""
    _git(repo, "rev-parse", "--git-dir")
    return _git(repo, "diff", "--no-color", "--no-ext-diff", "--find-renames", "-U3", f"{base}...{head}")
