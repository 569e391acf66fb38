"""Schema and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from bot import db
from bot.models import (
    Delivery,
    Feedback,
    Finding,
    FlywheelRun,
    ModelVersion,
    Project,
    Review,
    Severity,
)
from tests.support.db import session_scope


def test_db_upgrade_cli_twice(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REVIEWBOT_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "bot.cli", "db", "upgrade"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"upgraded from empty to {db.head_revision()}" in first.stdout
    second = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"already at revision {db.head_revision()}" in second.stdout


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    from tests.support.vllm_server import free_port

    env = {**os.environ, "REVIEWBOT_DATABASE_URL": f"postgresql://bot@127.0.0.1:{free_port()}/x"}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Connection refused" in result.stderr or "connection failed" in result.stderr


def test_migrations_match_the_models(engine: sa.Engine) -> None:
    """Every change to bot/models.py comes with its migration."""
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _project() -> Project:
    return Project(
        forge="gitlab",
        forge_url="https://gitlab.example",
        path="team/app",
        webhook_secret="s3cret",
        ignore_globs=["*.lock", "vendor/**"],
    )


def test_a_whole_review_round_trips(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        project = _project()
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=7, head_sha="a" * 40, timings={"find": 1.5})
        session.add(review)
        session.flush()
        finding = Finding(
            review_id=review.id,
            path="app.py",
            line=3,
            severity=Severity.MAJOR,
            title="Leaked handle",
            review="The file is never closed.",
            fingerprint="f" * 16,
            model_version="severity-v1",
        )
        session.add(finding)
        session.flush()
        session.add(
            Feedback(
                finding_id=finding.id, kind="reaction", value="+1", author="ana", source_event_id="award:1"
            )
        )
        session.add(
            ModelVersion(
                task="severity",
                adapter_name="severity-v1",
                path="/a",
                base_model="llama",
                metrics={"accuracy": 0.5},
            )
        )
        session.add(FlywheelRun(task="severity", rounds=[{"round": 0, "heldout_accuracy": 0.25}]))
    with session_scope(engine) as session:
        loaded = session.exec(select(Project)).one()
        assert loaded.ignore_globs == ["*.lock", "vendor/**"]
        assert loaded.enabled
        assert loaded.severity_threshold == "minor"
        assert session.exec(select(Review)).one().timings == {"find": 1.5}
        assert session.exec(select(Finding)).one().severity == "major"
        assert session.exec(select(ModelVersion)).one().status == "candidate"
        assert session.exec(select(FlywheelRun)).one().rounds[0]["heldout_accuracy"] == 0.25
        assert session.exec(select(Feedback)).one().created_at is not None


@pytest.mark.parametrize(
    "duplicate",
    [
        lambda: [Delivery(forge="github", delivery_id="d-1"), Delivery(forge="github", delivery_id="d-1")],
        lambda: [_project(), _project()],
        lambda: [
            ModelVersion(task="severity", adapter_name="severity-v3", path="/a", base_model="m"),
            ModelVersion(task="severity", adapter_name="severity-v3", path="/b", base_model="m"),
        ],
    ],
    ids=["delivery", "project", "adapter-name"],
)
def test_unique_constraints(engine: sa.Engine, duplicate: object) -> None:
    first, second = duplicate()  # type: ignore[operator]
    with session_scope(engine) as session:
        session.add(first)
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(second)


def test_same_delivery_id_on_two_forges_is_allowed(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        session.add(Delivery(forge="github", delivery_id="same"))
        session.add(Delivery(forge="gitlab", delivery_id="same"))


def test_feedback_needs_its_finding(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Feedback(finding_id=999, kind="reaction", source_event_id="award:9"))


def test_feedback_source_event_is_stored_once(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        project = _project()
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=1, head_sha="b" * 40)
        session.add(review)
        session.flush()
        finding = Finding(
            review_id=review.id,
            path="a.py",
            severity="minor",
            title="t",
            review="r",
            fingerprint="x",
            model_version="base",
        )
        session.add(finding)
        session.flush()
        finding_id = finding.id
        session.add(Feedback(finding_id=finding_id, kind="reaction", value="+1", source_event_id="award:42"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Feedback(finding_id=finding_id, kind="reaction", value="-1", source_event_id="award:42"))


def test_severity_order() -> None:
    assert [s.rank for s in Severity] == [3, 2, 1, 0]
