from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import __version__

GROUPS_WITHOUT_COMMANDS = ["feedback", "flywheel", "models"]


def reviewbot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # keep rich from wrapping help text mid-sentence
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_help_lists_every_group(tmp_path: Path) -> None:
    result = reviewbot("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ["db", *GROUPS_WITHOUT_COMMANDS]:
        assert group in result.stdout


def test_version(tmp_path: Path) -> None:
    result = reviewbot("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"reviewbot {__version__}"


@pytest.mark.parametrize("group", GROUPS_WITHOUT_COMMANDS)
def test_groups_without_commands_say_so(group: str, tmp_path: Path) -> None:
    result = reviewbot(group, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "No commands yet" in result.stdout
    assert "Commands" not in result.stdout  # nothing pretends to work


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "reviewbot"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
