from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import __version__

GROUPS = ["db", "project", "feedback", "flywheel", "models"]


def reviewbot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # keep rich from wrapping help text mid-sentence
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_help_lists_every_group(tmp_path: Path) -> None:
    result = reviewbot("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in GROUPS:
        assert group in result.stdout


def test_version(tmp_path: Path) -> None:
    result = reviewbot("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"reviewbot {__version__}"


@pytest.mark.parametrize(
    ("group", "commands"),
    [("flywheel", ["run", "status", "report", "worker"]), ("models", ["list", "promote", "rollback"])],
)
def test_trainer_groups_come_through_the_entry_point(group: str, commands: list[str], tmp_path: Path) -> None:
    result = reviewbot(group, "--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in commands:
        assert command in result.stdout


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "reviewbot"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_project_add_set_list_reviews(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COLUMNS": "200",
        "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db",
        "HOOK_SECRET": "s3",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "project", *args], env=env, capture_output=True, text=True
        )

    add = ["add", "--forge", "gitlab", "--url", "https://gitlab.example", "--project", "team/app"]
    added = run(*add, "--secret-env", "HOOK_SECRET", "--bot-username", "rb")
    assert added.returncode == 0, added.stderr
    assert "webhook URL:    http://127.0.0.1:8080/webhooks/gitlab" in added.stdout
    assert "webhook secret: s3 (from HOOK_SECRET)" in added.stdout
    again = run(*add, "--bot-username", "rb")
    assert again.returncode == 2 and "already registered" in again.stderr

    changed = run(
        "set", "team/app", "--threshold", "major", "--ignore", "docs/**", "--ignore", "*.md", "--disabled"
    )
    assert changed.returncode == 0, changed.stderr
    assert "threshold major, ignore docs/**, *.md, disabled" in changed.stdout
    listed = run("list").stdout
    assert "team/app" in listed and "major" in listed and "docs/**" in listed
    assert "no project 'nope/x'" in run("set", "nope/x", "--enabled").stderr
    reviews = run("reviews", "team/app")
    assert reviews.returncode == 0 and "MR" in reviews.stdout


def test_project_add_without_a_token_warns_and_still_adds(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db"}
    env.pop("GITHUB_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "project", "add", "--forge", "github", "--url", "https://github.com",
         "--project", "o/r"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "GITHUB_TOKEN" in result.stderr and "(bot: unknown)" in result.stdout
