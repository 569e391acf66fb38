"""Pruning, on SQLite and PostgreSQL: old deliveries, sent jobs, superseded findings without feedback
and empty failed reviews go; findings with feedback, a comment's newest row, done reviews, the newest
review of a merge request and anything a pending job names stay. Also ``reviewbot db prune``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlmodel import Session, col, select

from bot.models import Delivery, Feedback, Finding, FindingStatus, Outbox, Project, Review
from bot.outbox import Job, stage
from bot.retention import prune
from tests.support.db import session_scope

REVIEWS = {"first", "again", "superseded", "named", "recent", "newest"}
NOW = datetime.now(UTC)
OLD, RECENT = NOW - timedelta(days=100), NOW - timedelta(days=2)


def finding(review_id: int | None, fingerprint: str, comment: str | None, **fields: Any) -> Finding:
    assert review_id is not None
    values: dict[str, Any] = {"created_at": OLD} | fields
    return Finding(review_id=review_id, path="a.py", line=1, severity="major", title=fingerprint,
                   review="r", fingerprint=fingerprint, forge_comment_id=comment, model_version="base",
                   **values)  # fmt: skip


def seed(engine: sa.Engine) -> dict[str, int]:
    """An old review of merge request 1 and its old re-review, more reviews, deliveries and jobs; the
    ids of what the tests look at, by name."""
    ids: dict[str, int] = {}
    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
        session.add(project)
        session.flush()
        assert project.id is not None

        project_id = project.id

        def review(name: str, number: int, status: str, created: datetime) -> int:
            head = name.ljust(40, "0")[:40]
            row = Review(
                project_id=project_id, mr_number=number, head_sha=head, status=status, created_at=created
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            ids[name] = row.id
            return row.id

        first, again = review("first", 1, "done", OLD), review("again", 1, "done", OLD + timedelta(days=1))
        rows = {
            "plain": finding(first, "fa", "c1"),  # re-posted as the same comment: superseded
            "liked": finding(first, "fb", "c2"),  # superseded too, but it has feedback
            "kept below": finding(first, "fc", None),  # no comment, found again: superseded
            "pending newer": finding(first, "fe", "c5"),  # its newer row is pending: kept
            "moved": finding(first, "ff", "c6"),  # posted again as another comment: kept
            "young": finding(first, "fg", "c8", created_at=RECENT),  # superseded, but recent: kept
            "plain again": finding(again, "fa", "c1"),
            "liked again": finding(again, "fb", "c2"),
            "kept below again": finding(again, "fc", None),
            "pending": finding(again, "fe", "c5", status=FindingStatus.PENDING),
            "moved again": finding(again, "ff", "c7"),
            "young again": finding(again, "fg", "c8", created_at=RECENT),
        }
        session.add_all(rows.values())
        session.flush()
        ids |= {name: row.id for name, row in rows.items() if row.id is not None}
        session.add(Feedback(finding_id=ids["liked"], kind="reaction", value="+1", author="ana",
                             source_event_id="gitlab:award:1"))  # fmt: skip

        review("superseded", 1, "superseded", OLD + timedelta(days=2))  # empty, not the newest: removed
        review("named", 1, "failed", OLD + timedelta(days=3))  # empty, but a job to send names it
        review("recent", 1, "failed", RECENT)  # empty, but recent
        review("newest", 2, "failed", OLD)  # empty, but the newest of merge request 2: its head's only review

        session.add_all([
            Delivery(forge="gitlab", delivery_id="old", received_at=OLD),
            Delivery(forge="gitlab", delivery_id="recent", received_at=RECENT),
        ])  # fmt: skip
        stage(session, Job.REVIEW, ids["named"]).created_at = OLD  # never sent (the queue was down)
        stage(session, Job.ROLES, project.id).sent_at = OLD
        stage(session, Job.ROLES, project.id).sent_at = RECENT
    return ids


def removed_rows(engine: sa.Engine, ids: dict[str, int]) -> set[str]:
    """The names of the seeded findings and reviews no longer there."""
    with Session(engine) as session:
        findings = set(session.exec(select(col(Finding.id))).all())
        reviews = set(session.exec(select(col(Review.id))).all())
    return {name for name, row_id in ids.items() if row_id not in (reviews if name in REVIEWS else findings)}


def test_prune_removes_what_no_feature_needs(engine: sa.Engine) -> None:
    ids = seed(engine)
    assert prune(engine, timedelta(days=90)) == {"deliveries": 1, "outbox": 1, "findings": 2, "reviews": 1}
    assert removed_rows(engine, ids) == {"plain", "kept below", "superseded"}
    with Session(engine) as session:
        assert session.exec(select(Delivery.delivery_id)).all() == ["recent"]
        assert [row.sent_at is None for row in session.exec(select(Outbox).order_by(col(Outbox.id)))] == [
            True,  # the unsent job stays
            False,
        ]
        assert session.exec(select(Feedback)).one().finding_id == ids["liked"]  # its finding is still there

    assert prune(engine, timedelta(days=90)) == {"deliveries": 0, "outbox": 0, "findings": 0, "reviews": 0}


def test_a_short_retention_takes_the_recent_rows_too(engine: sa.Engine) -> None:
    ids = seed(engine)
    removed = prune(engine, timedelta(hours=1))
    assert removed == {"deliveries": 2, "outbox": 2, "findings": 3, "reviews": 1}
    # the recent failed review is merge request 1's newest: the reconciliation poll would queue its head
    assert removed_rows(engine, ids) == {"plain", "kept below", "young", "superseded"}


def test_the_cli_prunes_and_says_what_per_kind(engine: sa.Engine) -> None:
    seed(engine)
    env = {**os.environ, "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
           "REVIEWBOT_SECRET_KEY": Fernet.generate_key().decode()}  # fmt: skip
    command = [sys.executable, "-m", "bot.cli", "db", "prune", "--older-than"]
    done = subprocess.run([*command, "90d"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "deliveries: 1 removed",
        "outbox: 1 removed",
        "findings: 2 removed",
        "reviews: 1 removed",
    ]
    hours = subprocess.run([*command, "36h"], env=env, capture_output=True, text=True, timeout=60)
    assert hours.returncode == 0, hours.stderr
    assert "deliveries: 1 removed" in hours.stdout

    bad = subprocess.run([*command, "3w"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "like 90d or 12h" in bad.stderr


@pytest.mark.parametrize("text", ["90", "d", "-3d", "1.5d"])
def test_an_age_needs_a_whole_number_of_days_or_hours(text: str) -> None:
    import typer

    from bot.cli.db import parse_age

    with pytest.raises(typer.BadParameter):
        parse_age(text)
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12H") == timedelta(hours=12)
