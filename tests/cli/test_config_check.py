"""`reviewbot config check` and the admin's controls over repository files: validation with the line,
the settings in force with a project's floor and switch, `project list`, and the README's example."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from bot.cli import app as cli
from bot.models import Project
from tests.support.secrets import SECRET_KEY, project_row

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "reviewbot.example.toml"


def reviewbot(*args: str, engine: sa.Engine | None = None) -> Result:
    """The command, run in the test's folder (the current directory), on ``engine``'s database if given."""
    env = {"COLUMNS": "200", "REVIEWBOT_SECRET_KEY": SECRET_KEY}  # one table row a line
    if engine is not None:
        env["REVIEWBOT_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def registered(engine: sa.Engine) -> sa.Engine:
    """A database with the GitLab project team/app."""
    with Session(engine) as session:
        session.add(project_row("s", forge="gitlab", forge_url="https://gitlab.example", path="team/app"))
        session.commit()
    return engine


def stored(engine: sa.Engine) -> Project:
    with Session(engine) as session:
        return session.exec(select(Project)).one()


def test_the_readme_example_is_the_example_file_and_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks == [EXAMPLE.read_text()]
    result = reviewbot("config", "check", str(EXAMPLE), "--format", "json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["threshold"] == "major"
    assert shown["max_findings_per_file"] == 5
    assert shown["labels"] == {"reviewbot:critical": "critical", "reviewbot:needs-care": "major"}
    assert len(shown["instructions"]) == 2
    assert len(shown["digest"]) == 64


def test_the_first_config_path_here_is_checked(tmp_path: Path) -> None:
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "reviewbot.toml").write_text('threshold = "critical"\nsummary = false\n')
    result = reviewbot("config", "check")
    assert result.exit_code == 0, result.stderr
    assert ".github/reviewbot.toml: valid" in result.stdout
    assert re.search(r"threshold\s+│ critical", result.stdout)
    assert re.search(r"summary\s+│ off", result.stdout)
    (tmp_path / ".reviewbot.toml").write_text("")  # the root's file comes first
    assert ".reviewbot.toml: valid" in reviewbot("config", "check").stdout


def test_a_broken_file_is_one_line_with_its_line_number(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('threshold = "major"\n\n[[instructions]]\npaths = ["a"]\ntxt = "x"\n')
    result = reviewbot("config", "check", "bad.toml")
    assert result.exit_code == 2
    expected = "reviewbot: bad.toml:5: instructions[0].txt: unknown key (known: paths, text) (and 1 more)\n"
    assert result.stderr == expected
    (tmp_path / "syntax.toml").write_text('threshold = "major"\nignore = [,]\n')
    result = reviewbot("config", "check", "syntax.toml")
    assert (result.exit_code, result.stderr.startswith("reviewbot: syntax.toml:2: TOML syntax: ")) == (
        2,
        True,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "reviewbot: no .reviewbot.toml, .gitlab/reviewbot.toml, .github/reviewbot.toml in this folder"),
        (("missing.toml",), "reviewbot: missing.toml: No such file or directory"),
    ],
)
def test_no_file_is_a_clear_error(args: tuple[str, ...], expected: str) -> None:
    result = reviewbot("config", "check", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(expected)
    assert len(result.stderr.splitlines()) == 1


def test_the_files_words_reach_the_terminal_without_control_characters(tmp_path: Path) -> None:
    text = '[[instructions]]\npaths = ["[bold]*"]\ntext = "\\u001b[2J\\u202eflag it\\nnow"\n'
    (tmp_path / ".reviewbot.toml").write_text(text)
    result = reviewbot("config", "check")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "\u202e" not in result.stdout
    assert "[bold]*: [2Jflag it now" in result.stdout  # shown as written, never as markup
    (tmp_path / ".reviewbot.toml").write_text('"\\u001b[31mred" = 1\n')
    result = reviewbot("config", "check")
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr


def test_a_projects_floor_and_switch_apply(registered: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / ".reviewbot.toml").write_text('threshold = "trivial"\nsummary = false\n')
    check = ["config", "check", "--project", "team/app", "--format", "json"]
    assert json.loads(reviewbot(*check, engine=registered).stdout)["threshold"] == "trivial"

    result = reviewbot("project", "set", "team/app", "--threshold-floor", "major", engine=registered)
    assert result.exit_code == 0
    assert "repository file on, floor major" in result.stdout
    shown = json.loads(reviewbot(*check, engine=registered).stdout)
    assert (shown["threshold"], shown["summary"], shown["source"]) == ("major", False, ".reviewbot.toml")
    assert shown["notes"] == ["threshold trivial is below the project's floor: raised to major"]

    result = reviewbot("project", "set", "team/app", "--repo-config", "off", engine=registered)
    assert result.exit_code == 0
    assert "repository file off" in result.stdout
    shown = json.loads(reviewbot(*check, engine=registered).stdout)
    assert (shown["threshold"], shown["summary"], shown["source"]) == ("minor", True, None)
    assert "ignores repository files" in shown["notes"][0]

    on = ["project", "set", "team/app", "--repo-config", "on", "--threshold-floor", "none"]
    result = reviewbot(*on, engine=registered)
    assert result.exit_code == 0
    assert "repository file on\n" in result.stdout
    assert (stored(registered).repo_config, stored(registered).threshold_floor) == (True, None)


def test_the_keys_a_repository_may_set(registered: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / ".reviewbot.toml").write_text('threshold = "trivial"\nsummary = false\n')
    keys = ["project", "set", "team/app", "--repo-config-keys", "summary,instructions"]
    result = reviewbot(*keys, engine=registered)
    assert result.exit_code == 0, result.stderr
    assert "repository file on, keys instructions summary" in result.stdout
    check = ["config", "check", "--project", "team/app", "--format", "json"]
    shown = json.loads(reviewbot(*check, engine=registered).stdout)
    assert (shown["threshold"], shown["summary"]) == ("minor", False)
    assert shown["notes"] == ["keys the project does not let the file set, ignored: threshold"]
    bad = reviewbot("project", "set", "team/app", "--repo-config-keys", "threshold,colour", engine=registered)
    assert bad.exit_code == 2
    assert "no key 'colour'" in bad.stderr
    every = reviewbot("project", "set", "team/app", "--repo-config-keys", "all", engine=registered)
    assert every.exit_code == 0
    assert stored(registered).repo_config_keys is None


def test_bad_admin_settings_are_refused(registered: sa.Engine) -> None:
    result = reviewbot("project", "set", "team/app", "--threshold-floor", "severe", engine=registered)
    assert result.exit_code == 2
    assert result.stderr.startswith("reviewbot: --threshold-floor: no severity 'severe'; one of critical,")
    assert reviewbot("project", "set", "team/app", "--repo-config", "maybe", engine=registered).exit_code == 2
    assert reviewbot("config", "check", "--project", "team/nope", engine=registered).exit_code == 2


def test_project_list_shows_the_repository_files_state(registered: sa.Engine) -> None:
    assert "│ on        │ (not yet)" in reviewbot("project", "list", engine=registered).stdout
    with Session(registered) as session:
        row = session.exec(select(Project)).one()
        row.repo_config_status = ".reviewbot.toml:2: [red]x\x1b[2J: unknown key"
        row.repo_config_checked_at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
        session.add(row)
        session.commit()
    listed = reviewbot("project", "list", engine=registered).stdout
    assert ".reviewbot.toml:2: [red]x[2J: unknown key (2026-01-02 03:04)" in listed
    assert "\x1b" not in listed
