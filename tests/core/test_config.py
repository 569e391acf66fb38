from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, redact_url

REVIEWBOT = [sys.executable, "-m", "bot.cli"]


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    settings = load_settings()
    home = tmp_path / "home"  # REVIEWBOT_HOME of every test
    assert settings.home == home
    assert settings.database_url == f"sqlite:///{home / 'reviewbot.db'}"
    assert settings.queue_url == f"sqlite:///{home / 'queue.db'}"
    assert settings.flywheel_dir == home / "flywheel"
    assert str(settings.student_base_url) == "http://127.0.0.1:8000/v1"
    assert settings.teacher_base_url is None
    assert settings.admin_token is None
    assert settings.log_level == "INFO"


def test_environment_and_an_env_file_when_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "reviewbot.env"
    env_file.write_text("REVIEWBOT_STUDENT_MODEL=from-dotenv\nREVIEWBOT_LOG_LEVEL=debug\nOTHER=1\n")
    monkeypatch.setenv("REVIEWBOT_LOG_LEVEL", "warning")  # the environment wins over the file
    monkeypatch.setenv("REVIEWBOT_DATABASE_URL", "postgresql://bot@db:5432/reviewbot")
    monkeypatch.setenv("REVIEWBOT_QUEUE_URL", "redis://127.0.0.1:6379/0")
    settings = load_settings(env_file)
    assert settings.student_model == "from-dotenv"
    assert settings.log_level == "WARNING"
    assert settings.database_url == "postgresql+psycopg://bot@db:5432/reviewbot"
    assert settings.queue_url == "redis://127.0.0.1:6379/0"


def test_the_data_folder_is_the_xdg_one_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REVIEWBOT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().database_url == f"sqlite:///{tmp_path / 'xdg' / 'reviewbot' / 'reviewbot.db'}"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert load_settings().home == tmp_path / "user" / ".local" / "share" / "reviewbot"


def test_the_data_folders_files_are_read_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """run.env (the run command's choices) < reviewbot.env (the user's) < --env-file < environment,
    whatever the working directory."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "run.env").write_text(
        "REVIEWBOT_STUDENT_BASE_URL=http://127.0.0.1:8011/v1\nREVIEWBOT_STUDENT_MODEL=demo\n"
        "REVIEWBOT_LOG_LEVEL=debug\nREVIEWBOT_LLM_TIMEOUT_S=5\n"
    )
    (home / "reviewbot.env").write_text("REVIEWBOT_STUDENT_MODEL=mine\nREVIEWBOT_LOG_LEVEL=warning\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings()
    assert str(settings.student_base_url) == "http://127.0.0.1:8011/v1"
    assert settings.student_model == "mine"
    assert settings.log_level == "WARNING"
    explicit = tmp_path / "explicit.env"
    explicit.write_text("REVIEWBOT_LOG_LEVEL=error\nREVIEWBOT_LLM_TIMEOUT_S=7\n")
    monkeypatch.setenv("REVIEWBOT_LLM_TIMEOUT_S", "9")
    settings = load_settings(explicit)
    assert settings.log_level == "ERROR"
    assert settings.llm_timeout_s == 9


def test_a_dotenv_in_the_working_directory_is_not_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REVIEWBOT_FINETUNE_LAUNCHER=touch pwned\n")  # the tests run in tmp_path
    assert load_settings().finetune_launcher is None


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.env")


@pytest.mark.parametrize("how", ["option", "variable"])
def test_the_cli_reads_the_env_file_it_is_given(tmp_path: Path, how: str) -> None:
    (tmp_path / "site.env").write_text(f"REVIEWBOT_DATABASE_URL=sqlite:///{tmp_path}/from-file.db\n")
    (tmp_path / ".env").write_text(f"REVIEWBOT_DATABASE_URL=sqlite:///{tmp_path}/from-cwd.db\n")
    env = {**os.environ, "REVIEWBOT_ENV_FILE": "site.env"} if how == "variable" else dict(os.environ)
    option = ["--env-file", "site.env"] if how == "option" else []
    result = subprocess.run(
        [*REVIEWBOT, *option, "db", "upgrade"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-file.db").exists()
    assert not (tmp_path / "from-cwd.db").exists()


def test_redacted_url_hides_the_password() -> None:
    assert redact_url("redis://:hunter2@queue:6379/0") == "redis://:***@queue:6379/0"
    assert redact_url("rediss://bot:hunter2@queue/1") == "rediss://bot:***@queue/1"
    assert redact_url("sqlite:///q.db") == "sqlite:///q.db"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("REVIEWBOT_DATABASE_URL", "mysql://x/y", "expected sqlite:///PATH or postgresql://"),
        ("REVIEWBOT_QUEUE_URL", "amqp://x", "expected sqlite:///PATH or redis://"),
        ("REVIEWBOT_STUDENT_BASE_URL", "not a url", "URL"),
        ("REVIEWBOT_LOG_LEVEL", "loud", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("REVIEWBOT_LLM_CONCURRENCY", "0", "greater than or equal to 1"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert name in str(raised.value)
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bad_configuration_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "REVIEWBOT_DATABASE_URL": "mysql://nope", "REVIEWBOT_LLM_TIMEOUT_S": "-1"}
    result = subprocess.run(
        [*REVIEWBOT, "db", "upgrade"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "REVIEWBOT_DATABASE_URL" in lines[0]
    assert "REVIEWBOT_LLM_TIMEOUT_S" in lines[0]
    assert "Traceback" not in result.stderr


def test_password_in_a_bad_url_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEWBOT_DATABASE_URL", "mysql://bot:hunter2@db/x")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)
