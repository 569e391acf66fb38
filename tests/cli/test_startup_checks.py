"""What ``reviewbot serve`` and ``worker`` check at start-up: each enabled project's token variable."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from bot.cli.service import warn_missing_tokens
from bot.models import Project


def test_one_line_per_enabled_project_whose_token_is_missing(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REVIEWBOT_TOKEN_SET", "glpat-x")
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    gitlab = {"forge": "gitlab", "forge_url": "https://gl", "webhook_secret": "s"}
    github = {"forge": "github", "forge_url": "https://github.com", "webhook_secret": "s"}
    rows = [
        Project(**gitlab, path="a/set", token_env="REVIEWBOT_TOKEN_SET"),
        Project(**gitlab, path="a/unset", token_env="REVIEWBOT_TOKEN_NO"),
        Project(**github, path="o/default"),
        Project(**github, path="o/off", enabled=False),
        Project(**github, path="o/app", installation_id=7),  # an App's: installation tokens
    ]
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    with caplog.at_level(logging.WARNING, logger="reviewbot"):
        missing = warn_missing_tokens(engine)
    assert sorted(missing) == ["GITHUB_TOKEN", "REVIEWBOT_TOKEN_NO"]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert any("a/unset" in line and "$REVIEWBOT_TOKEN_NO" in line for line in lines)
