"""``reviewbot app``: an App registered against the fake GitHub (its key checked there), listed, and
synced with the installations GitHub lists; bad keys and unknown Apps are one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from bot.cli import app as cli
from bot.models import Project, Source, SourceKind
from tests.support.fake_github import FakeGitHub
from tests.support.live_server import live_server
from tests.support.secrets import BOX, SECRET_KEY

APP_ID, INSTALLATION = 4242, 77
HOSTILE = "evil/\x1b[31mred\u202e"


def pem_file(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "app.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def fake() -> FakeGitHub:
    fake = FakeGitHub()
    fake.add_app(APP_ID, "review-app", INSTALLATION)
    return fake


@pytest.fixture
def url(fake: FakeGitHub) -> Iterator[str]:
    with live_server(fake.app) as url:
        yield url


def reviewbot(engine: sa.Engine, *args: str) -> Result:
    env = {
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "REVIEWBOT_SECRET_KEY": SECRET_KEY,
        "REVIEWBOT_PUBLIC_URL": "https://bot.example.com",
        "APP_SECRET": "the-apps-webhook-secret",
        "COLUMNS": "200",  # one table row a line
    }
    return CliRunner().invoke(cli, list(args), env=env)


def add(engine: sa.Engine, url: str, pem: Path, app_id: int = APP_ID) -> Result:
    return reviewbot(
        engine, "app", "add", "--forge", "github", "--app-id", str(app_id), "--private-key-file", str(pem),
        "--secret-env", "APP_SECRET", "--url", url, "--threshold", "major",
    )  # fmt: skip


def sources(engine: sa.Engine) -> list[Source]:
    with Session(engine) as session:
        return list(session.exec(select(Source)).all())


def test_app_add_checks_the_key_with_github_and_prints_the_webhook(
    engine: sa.Engine, url: str, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    added = add(engine, url, pem_file(tmp_path, key))
    assert added.exit_code == 0, added.output
    [source] = sources(engine)
    assert (source.kind, source.name, source.app_id, source.bot_username) == (
        SourceKind.GITHUB_APP, str(APP_ID), APP_ID, "review-app[bot]",
    )  # fmt: skip
    assert BOX.open(source.webhook_secret) == "the-apps-webhook-secret"
    assert BOX.open(source.private_key or "") == pem_file(tmp_path, key).read_text()
    assert source.severity_threshold == "major"
    assert f"webhook URL:    https://bot.example.com/webhooks/github/{source.webhook_key}" in added.output
    for event in (
        "pull_request",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "issue_comment",
    ):
        assert event in added.output
    assert "Pull requests: read and write" in added.output
    assert "the-apps-webhook-secret" not in added.output  # it came from a variable: not echoed

    again = add(engine, url, pem_file(tmp_path, key))
    assert again.exit_code == 2
    assert "already registered" in again.output


def test_app_add_refuses_a_bad_key_and_an_unknown_app(engine: sa.Engine, url: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    bad = add(engine, url, junk)
    assert bad.exit_code == 2
    assert "not an unencrypted private key in PEM" in bad.output

    elliptic = add(engine, url, pem_file(tmp_path, ec.generate_private_key(ec.SECP256R1())))
    assert elliptic.exit_code == 2
    assert "not an RSA key" in elliptic.output

    missing = add(engine, url, tmp_path / "nowhere.pem")
    assert missing.exit_code == 2
    assert "No such file" in missing.output

    rsa_key = pem_file(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    unknown = add(engine, url, rsa_key, app_id=999)
    assert unknown.exit_code == 2
    assert "refused App 999: it does not know this App" in unknown.output
    assert sources(engine) == []


def test_app_sync_adds_what_was_installed_and_disables_what_was_left(
    engine: sa.Engine, fake: FakeGitHub, url: str, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert add(engine, url, pem_file(tmp_path, key)).exit_code == 0
    fake.install(APP_ID, INSTALLATION, ["octo/one", HOSTILE])
    synced = reviewbot(engine, "app", "sync", str(APP_ID))
    assert synced.exit_code == 0, synced.output
    assert "1 installations; 2 added" in synced.output
    assert "\x1b" not in synced.output  # the forge's names are data, not terminal commands
    with Session(engine) as session:
        rows = {p.path: p for p in session.exec(select(Project)).all()}
    assert set(rows) == {"octo/one", HOSTILE}
    assert {(p.installation_id, p.enabled, p.bot_username) for p in rows.values()} == {
        (INSTALLATION, True, "review-app[bot]")
    }

    fake.install(APP_ID, INSTALLATION, ["octo/one"])
    again = reviewbot(engine, "app", "sync", str(APP_ID))
    assert "1 disabled" in again.output

    listed = reviewbot(engine, "app", "list")
    assert listed.exit_code == 0, listed.output
    assert "1 of 2 enabled" in listed.output

    assert reviewbot(engine, "app", "sync", "12").exit_code == 2
