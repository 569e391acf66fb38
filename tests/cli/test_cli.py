from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import __version__

GROUPS = ["db", "project", "app", "feedback", "config", "flywheel", "models", "doctor", "audit"]


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


COMMANDS = [
    ["db", "upgrade"], ["project", "add"], ["project", "set"], ["project", "list"], ["project", "reviews"],
    ["feedback", "list"], ["feedback", "export"], ["feedback", "stats"], ["review"], ["serve"], ["worker"],
    ["flywheel", "run"], ["flywheel", "status"], ["flywheel", "report"], ["flywheel", "worker"],
    ["flywheel", "golden", "add"], ["flywheel", "golden", "list"], ["project", "rotate-secret"],
    ["models", "list"], ["models", "promote"], ["models", "rollback"], ["project", "hook"],
    ["app", "add"], ["app", "list"], ["app", "sync"], ["doctor"], ["config", "check"],
    ["feedback", "suppressed"], ["feedback", "unsuppress"], ["feedback", "confusion"], ["audit", "list"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_reads_like_a_tools(command: list[str], tmp_path: Path) -> None:
    """No Python types as metavars, nothing after a flag, positionals in capitals."""
    result = reviewbot(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for leak in ("<bool>", "<str>", "<int>", "<list", "<Path", "<path>", "{"):
        assert leak not in result.stdout, f"{' '.join(command)} --help shows {leak!r}:\n{result.stdout}"


@pytest.mark.parametrize(
    "group", ["project", "app", "feedback", "db", "config", "flywheel", "models", "audit"]
)
def test_every_group_shows_an_example(group: str, tmp_path: Path) -> None:
    result = reviewbot(group, "--help", cwd=tmp_path)
    assert f"Example: reviewbot {group}" in " ".join(result.stdout.split())


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
    assert result.returncode == 0
    assert __version__ in result.stdout


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

    behind = run("list")  # commands never migrate: they say what to run
    assert behind.returncode == 2
    assert "run `reviewbot db upgrade`" in behind.stderr
    upgrade = [sys.executable, "-m", "bot.cli", "db", "upgrade"]
    assert subprocess.run(upgrade, env=env, capture_output=True, text=True).returncode == 0
    add = [
        "add",
        "--forge",
        "gitlab",
        "--url",
        "https://gitlab.example",
        "--project",
        "team/app",
        "--skip-checks",
    ]
    added = run(*add, "--secret-env", "HOOK_SECRET", "--bot-username", "rb")
    assert added.returncode == 0, added.stderr
    assert "webhook URL:    http://127.0.0.1:8080/webhooks/gitlab" in added.stdout
    assert "webhook secret: s3 (from HOOK_SECRET)" in added.stdout
    again = run(*add, "--bot-username", "rb")
    assert again.returncode == 2
    assert "already registered" in again.stderr

    changed = run(
        "set", "team/app", "--threshold", "major", "--ignore", "docs/**", "--ignore", "*.md", "--disabled"
    )
    assert changed.returncode == 0, changed.stderr
    assert "threshold major, ignore docs/**, *.md, disabled" in changed.stdout
    listed = run("list").stdout
    assert "team/app" in listed
    assert "major" in listed
    assert "docs/**" in listed
    assert "no project 'nope/x'" in run("set", "nope/x", "--enabled").stderr
    reviews = run("reviews", "team/app")
    assert reviews.returncode == 0
    assert "MR" in reviews.stdout


def test_project_add_without_a_token_is_refused_unless_checks_are_skipped(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db"}
    env.pop("GITHUB_TOKEN", None)
    upgrade = [sys.executable, "-m", "bot.cli", "db", "upgrade"]
    subprocess.run(upgrade, env=env, check=True, capture_output=True)
    add = [sys.executable, "-m", "bot.cli", "project", "add", "--forge", "github", "--url", "https://github.com",
           "--project", "o/r"]  # fmt: skip
    refused = subprocess.run(add, env=env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "set the environment variable GITHUB_TOKEN" in refused.stderr
    result = subprocess.run([*add, "--skip-checks"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "GITHUB_TOKEN" in result.stderr  # a warning: the bot's name could not be asked
    assert "(bot: unknown)" in result.stdout
