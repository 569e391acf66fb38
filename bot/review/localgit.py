"""Diffs and files of a local git repository, for ``reviewbot review``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bot.forges.base import MAX_FILE_BYTES, decode_text, repo_path_problem


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


def commit_of(repo: Path, ref: str) -> str:
    """The commit ``ref`` names. Refs come from the command line (a CI job's variables, maybe a pull
    request's branch name), so one is only ever an argument after ``--end-of-options``: a ref
    spelled like an option (``--output=FILE``) is an unknown revision, never an option of git's."""
    try:
        return (
            _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
            .decode()
            .strip()
        )
    except GitError:
        raise GitError(f"unknown revision {ref}") from None


def diff_range(repo: Path, base: str, head: str) -> bytes:
    """The changes of ``head`` since it left ``base`` (the merge base to head), as a unified diff with
    renames detected."""
    _git(repo, "rev-parse", "--git-dir")
    base_commit, head_commit = commit_of(repo, base), commit_of(repo, head)
    merge_base = _git(repo, "merge-base", base_commit, head_commit).decode().strip()
    return _git(
        repo, "diff", "--no-color", "--no-ext-diff", "--find-renames", "-U3", merge_base, head_commit, "--"
    )


def file_at(repo: Path, ref: str, path: str) -> str | None:
    """The text of ``path`` at ``ref`` (``git show REF:PATH``), as ``Forge.file_at`` reads it from a
    forge: None when absent there or not text (a directory, a binary file); GitError for an unknown
    ref, a path ``repo_path_problem`` refuses (``REF:../x`` would be relative to the working
    directory) or a file past ``MAX_FILE_BYTES``."""
    problem = repo_path_problem(path)
    if problem is not None:
        raise GitError(problem)
    commit = commit_of(repo, ref)
    try:  # the object's id; --end-of-options: the spec is never taken for an option
        blob = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}:{path}")
    except GitError:
        return None
    obj = blob.decode().strip()
    try:  # a submodule's commit is not in this repository
        kind = _git(repo, "cat-file", "-t", obj).decode().strip()
    except GitError:
        return None
    if kind != "blob":  # a directory
        return None
    size = int(_git(repo, "cat-file", "-s", obj))
    if size > MAX_FILE_BYTES:
        raise GitError(
            f"{path} at {ref} is too large: reviewbot reads files of at most {MAX_FILE_BYTES} bytes"
        )
    return decode_text(_git(repo, "cat-file", "blob", obj))
