"""Temporary git repositories for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
}


def git(repo: Path, *args: str) -> bytes:
    import os

    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV}
    ).stdout


def init_repo(repo: Path, files: dict[str, bytes | str]) -> Path:
    """A repository on branch ``main`` with one commit holding ``files``."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, files, "base")
    return repo


def commit(repo: Path, files: dict[str, bytes | str | None], message: str) -> None:
    """Write (or, for None, delete) ``files`` and commit them."""
    for name, content in files.items():
        path = repo / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
