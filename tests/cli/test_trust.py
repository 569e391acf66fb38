"""Secrets and credentials on the command line: sealed webhook secrets, per-project URLs, rotation,
refused empty secrets and token variables, and no password in what `serve` prints."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot import db
from bot.config import ConfigError, load_settings
from bot.forges import forge_for
from bot.forges.base import ForgeError
from bot.models import Project
from bot.secrets import SEALED, secret_box
from tests.support.vllm_server import free_port

ADD = [
    "project", "add", "--forge", "gitlab", "--url", "https://gitlab.example", "--project", "team/app",
    "--skip-checks",  # no GitLab at that address to check the token with
]  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db"}
    assert reviewbot(env, "db", "upgrade").returncode == 0
    return env


def reviewbot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True)


def stored(tmp_path: Path) -> Project:
    engine = db.make_engine(f"sqlite:///{tmp_path}/bot.db")
    with Session(engine) as session:
        return session.exec(select(Project)).one()


def opened(tmp_path: Path, sealed: str) -> str | None:
    return secret_box(load_settings(database_url=f"sqlite:///{tmp_path}/bot.db")).open(sealed)


def test_add_seals_the_secret_and_prints_the_projects_own_url(env: dict[str, str], tmp_path: Path) -> None:
    added = reviewbot(
        {**env, "HOOK_SECRET": "s3cr3t"}, *ADD, "--secret-env", "HOOK_SECRET", "--bot-username", "rb"
    )
    assert added.returncode == 0, added.stderr
    row = stored(tmp_path)
    assert row.webhook_key
    assert f"webhook URL:    http://127.0.0.1:8080/webhooks/gitlab/{row.webhook_key}" in added.stdout
    assert row.webhook_secret.startswith(SEALED)
    assert "s3cr3t" not in row.webhook_secret
    assert opened(tmp_path, row.webhook_secret) == "s3cr3t"
    key_file = tmp_path / "bot.db.key"  # the embedded default's key, made once by `db upgrade`
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_is_refused(env: dict[str, str], value: str) -> None:
    added = reviewbot(
        {**env, "HOOK_SECRET": value}, *ADD, "--secret-env", "HOOK_SECRET", "--bot-username", "rb"
    )
    assert added.returncode == 2
    assert "HOOK_SECRET" in added.stderr
    assert "empty" in added.stderr


def test_a_token_variable_outside_the_prefix_is_refused(env: dict[str, str]) -> None:
    refused = reviewbot(env, *ADD, "--token-env", "REVIEWBOT_DATABASE_URL", "--bot-username", "rb")
    assert refused.returncode == 2
    assert "must start with REVIEWBOT_TOKEN_" in refused.stderr
    allowed = reviewbot({**env, "REVIEWBOT_TOKEN_ENV_PREFIX": "SHOP_"}, *ADD, "--token-env", "SHOP_TOKEN",
                        "--bot-username", "rb")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_forge_for_refuses_a_token_variable_outside_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    project = Project(
        forge="gitlab", forge_url="http://x", path="a/b", webhook_secret="", token_env="DATABASE_PASSWORD"
    )
    with pytest.raises(ForgeError, match="must start with REVIEWBOT_TOKEN_"):
        forge_for(project)


def test_rotate_secret_prints_a_new_secret_once(env: dict[str, str], tmp_path: Path) -> None:
    assert (
        reviewbot(
            {**env, "HOOK_SECRET": "old"}, *ADD, "--secret-env", "HOOK_SECRET", "--bot-username", "rb"
        ).returncode
        == 0
    )
    rotated = reviewbot(env, "project", "rotate-secret", "team/app")
    assert rotated.returncode == 0, rotated.stderr
    new = next(line.split()[-1] for line in rotated.stdout.splitlines() if line.startswith("webhook secret:"))
    assert new != "old"
    assert len(new) >= 32
    assert opened(tmp_path, stored(tmp_path).webhook_secret) == new


def test_db_upgrade_seals_plain_secrets_and_gives_webhook_keys(env: dict[str, str], tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/bot.db")
    with engine.begin() as connection:  # a row as an older reviewbot wrote it
        connection.execute(
            sa.insert(Project).values(
                forge="gitlab", forge_url="http://x", path="a/b", webhook_secret="plain",
                severity_threshold="minor", ignore_globs=[], enabled=True, created_at=sa.func.now(),
            )
        )  # fmt: skip
    upgraded = reviewbot(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "1 project(s)" in upgraded.stdout
    row = stored(tmp_path)
    assert row.webhook_key
    assert opened(tmp_path, row.webhook_secret) == "plain"
    assert "project(s)" not in reviewbot(env, "db", "upgrade").stdout  # done once


def test_postgresql_needs_the_secret_key() -> None:
    with pytest.raises(ConfigError, match="REVIEWBOT_SECRET_KEY is needed"):
        secret_box(load_settings(database_url="postgresql://bot@db/x"))
    with pytest.raises(ConfigError, match="not a Fernet key"):
        secret_box(load_settings(database_url="postgresql://bot@db/x", secret_key="short"))


def test_serve_never_prints_the_queue_password(env: dict[str, str]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
        env={**env, "REVIEWBOT_QUEUE_URL": "redis://:hunter2@127.0.0.1:6379/11"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "queue at redis://:***@127.0.0.1:6379/11" in output, output
    assert "hunter2" not in output
