"""``localgit.file_at``: a file of a local repository at a ref, read as the forges read one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.forges.base import MAX_FILE_BYTES
from bot.review.localgit import GitError, commit_of, file_at
from tests.support.gitrepo import commit, git, init_repo

CONFIG = ".reviewbot.toml"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = init_repo(
        tmp_path / "repo",
        {CONFIG: 'threshold = "major"\n', "logo.png": b"\x89PNG\x00\x00", "src/app.py": "x = 1\n"},
    )
    git(repo, "branch", "base")
    commit(repo, {CONFIG: 'threshold = "minor"\n', "big.txt": "#" * (MAX_FILE_BYTES + 1)}, "change")
    return repo


def test_a_file_is_read_at_the_ref_asked_for(repo: Path) -> None:
    assert file_at(repo, "base", CONFIG) == 'threshold = "major"\n'
    assert file_at(repo, "main", CONFIG) == 'threshold = "minor"\n'
    assert file_at(repo, commit_of(repo, "base"), "src/app.py") == "x = 1\n"


def test_an_absent_file_a_folder_or_binary_content_is_none(repo: Path) -> None:
    assert file_at(repo, "main", ".gitlab/reviewbot.toml") is None
    assert file_at(repo, "base", "big.txt") is None  # added after base
    assert file_at(repo, "main", "src") is None
    assert file_at(repo, "main", "logo.png") is None


def test_the_working_tree_is_not_read(repo: Path) -> None:
    (repo / CONFIG).write_text("uncommitted\n")
    (repo / "new.toml").write_text("untracked\n")

    assert file_at(repo, "main", CONFIG) == 'threshold = "minor"\n'
    assert file_at(repo, "main", "new.toml") is None


def test_a_file_past_the_cap_is_an_error(repo: Path) -> None:
    with pytest.raises(GitError, match=r"big\.txt at main is too large"):
        file_at(repo, "main", "big.txt")


@pytest.mark.parametrize("path", ["../outside.toml", "./.reviewbot.toml", "%2e%2e/x", "/etc/passwd", ""])
def test_a_hostile_path_is_refused(repo: Path, path: str) -> None:
    (repo.parent / "outside.toml").write_text("secret\n")  # REF:../x would read it relative to the cwd

    with pytest.raises(GitError, match="repository path"):
        file_at(repo, "main", path)


@pytest.mark.parametrize("ref", ["no-such-branch", "--output=/tmp/x"])
def test_an_unknown_ref_is_an_error(repo: Path, ref: str) -> None:
    with pytest.raises(GitError, match="unknown revision"):
        file_at(repo, ref, CONFIG)
