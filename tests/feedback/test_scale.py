"""Reading findings at scale: labels, export and ``/metrics``' figures past PostgreSQL's 65,535 bound
parameters per statement, with pending findings (recorded before posting) counted nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from prometheus_client.core import Metric
from sqlmodel import col

from bot.events import UP, SignalKind
from bot.feedback.labels import HARD_LABEL_KINDS, labelled_findings, severity_examples
from bot.feedback.stats import FeedbackCollector, acceptance, feedback_stats
from bot.models import Feedback, Finding, FindingStatus, Project, Review
from tests.support.db import session_scope

POSTED, PENDING = 70_000, 500
CORRECTED, DISMISSED, LIKED, ADDRESSED = 1_000, 400, 900, 300


def seed(engine: sa.Engine, posted: int, pending: int) -> list[int]:
    """``posted`` findings over two model versions and two severities, then ``pending`` ones (not on
    the forge yet), bulk inserted; the posted findings' ids."""
    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
        session.add(project)
        session.flush()
        assert project.id is not None
        reviews = [
            Review(project_id=project.id, mr_number=n, head_sha="a" * 40, status="done") for n in range(70)
        ]
        session.add_all(reviews)
        session.flush()
        review_ids = [r.id for r in reviews if r.id is not None]
    now = datetime.now(UTC)

    def row(n: int, status: FindingStatus) -> dict[str, Any]:
        return {
            "review_id": review_ids[n % len(review_ids)], "path": f"src/m{n % 50}.py", "line": n % 400 + 1,
            "side": "new", "severity": ("major", "minor")[n % 2], "title": f"Finding {n}",
            "review": f"Issue number {n}.", "explanation": "", "code": f"x = {n}", "anchor_text": "",
            "fingerprint": f"{n:016x}", "model_version": ("severity-v1", "severity-v2")[n % 3 == 0],
            "forge_comment_id": str(n) if status == FindingStatus.POSTED else None,  # pending: not posted
            "status": status.value, "created_at": now,
        }  # fmt: skip

    rows = [row(n, FindingStatus.POSTED) for n in range(posted)]
    rows += [row(posted + n, FindingStatus.PENDING) for n in range(pending)]
    with engine.begin() as connection:
        bulk_insert(connection, Finding.__table__, rows)  # type: ignore[attr-defined]
        ids = [
            finding_id
            for finding_id in connection.execute(
                sa.select(col(Finding.id))
                .where(col(Finding.status) == FindingStatus.POSTED)
                .order_by(col(Finding.id))
            ).scalars()
            if finding_id is not None
        ]
    return ids


def add_signals(engine: sa.Engine, ids: list[int]) -> None:
    """Corrections, dismissals, 👍 and addressing pushes by a developer, each on findings of its own."""
    said = [
        (SignalKind.SEVERITY, "trivial", "ana", CORRECTED),
        (SignalKind.DISMISS, "not an issue", "ana", DISMISSED),
        (SignalKind.REACTION, UP, "ana", LIKED),
        (SignalKind.ADDRESSED, "", "", ADDRESSED),
    ]
    rows, start = [], 0
    for kind, value, author, count in said:
        for finding_id in ids[start : start + count]:
            rows.append({"finding_id": finding_id, "kind": kind, "value": value, "author": author,
                         "role": "developer" if author else "", "created_at": datetime.now(UTC),
                         "source_event_id": f"{kind}:{finding_id}"})  # fmt: skip
        start += count
    with engine.begin() as connection:
        bulk_insert(connection, Feedback.__table__, rows)  # type: ignore[attr-defined]
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))  # as autovacuum does after a bulk change


def bulk_insert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's COPY (seconds for 70,000 rows), else one executemany."""
    if connection.dialect.name != "postgresql":
        connection.execute(sa.insert(table), rows)
        return
    columns = list(rows[0])
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[name] for name in columns])


def gauges(metrics: list[Metric]) -> dict[str, float]:
    """``name{model_version,severity}`` -> value of every sample the collector gave."""
    return {
        f"{s.name}{{{s.labels['model_version']},{s.labels['severity']}}}": s.value
        for metric in metrics
        for s in metric.samples
    }


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_seventy_thousand_findings_are_labelled_exported_and_counted(
    engine: sa.Engine, tmp_path: Path
) -> None:
    ids = seed(engine, POSTED, PENDING)
    add_signals(engine, ids)

    started = time.monotonic()
    states: Counter[str] = Counter()
    hard = []
    for item in labelled_findings(engine):
        states[item.label.state.value] += 1
        if item.label.severity is not None:
            hard.append(item.finding.id)
    timings = {"labelled_findings": time.monotonic() - started}
    assert states == {
        "corrected": CORRECTED, "dismissed": DISMISSED, "accepted": LIKED + ADDRESSED,
        "unlabelled": POSTED - CORRECTED - DISMISSED - LIKED - ADDRESSED,
    }  # fmt: skip  # the pending findings are not among them
    started = time.monotonic()
    judged = list(labelled_findings(engine, with_signal_of=HARD_LABEL_KINDS))  # what export needs, read alone
    timings["labelled_findings, commands only"] = time.monotonic() - started
    assert [e["meta"]["finding_id"] for e in severity_examples(judged)] == hard

    out = tmp_path / "severity.jsonl"
    env = {**os.environ, "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
           "REVIEWBOT_SECRET_KEY": Fernet.generate_key().decode()}  # fmt: skip
    command = [sys.executable, "-m", "bot.cli", "feedback", "export", "--task", "severity", "--out", str(out)]
    started = time.monotonic()
    exported = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    timings["reviewbot feedback export"] = time.monotonic() - started
    assert exported.returncode == 0, exported.stderr
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["meta"]["finding_id"] for e in examples] == hard
    assert len(examples) == CORRECTED
    assert {e["answer"]["issue_type"] for e in examples} == {"trivial"}

    clock = [0.0]
    collector = FeedbackCollector(engine, max_age_s=60, clock=lambda: clock[0])
    started = time.monotonic()
    figures = gauges(list(collector.collect()))
    timings["/metrics figures"] = time.monotonic() - started
    findings = {k: v for k, v in figures.items() if k.startswith("reviewbot_findings{")}
    assert sum(findings.values()) == POSTED  # "Findings posted": none of the pending ones
    by_group = Counter(f"{{{i.finding.model_version},{i.finding.severity}}}" for i in judged)
    for key, count in findings.items():
        group = key.removeprefix("reviewbot_findings")
        assert figures[f"reviewbot_feedback_corrected_ratio{group}"] == round(by_group[group] / count, 3)

    with session_scope(engine) as session:  # a review posts more: the cached figures stand a minute
        session.add(Finding(review_id=1, path="a.py", severity="major", title="t", review="r",
                            fingerprint="f" * 16, model_version="severity-v1"))  # fmt: skip
    clock[0] = 30.0
    assert gauges(list(collector.collect())) == figures
    clock[0] = 61.0
    later = gauges(list(collector.collect()))
    assert sum(v for k, v in later.items() if k.startswith("reviewbot_findings{")) == POSTED + 1
    sys.stderr.write(f"{POSTED} findings: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + "\n")


def test_the_databases_figures_match_the_labels_and_leave_pending_findings_out(engine: sa.Engine) -> None:
    ids = seed(engine, 120, 7)
    add_signals(engine, ids[::2])  # spread over both models and severities
    with session_scope(engine) as session:  # a trusted 👍 overruled by a maintainer's dismissal
        session.add(Feedback(finding_id=ids[1], kind="reaction", value=UP, author="bo", role="developer",
                             source_event_id="bo:1"))  # fmt: skip
        session.add(Feedback(finding_id=ids[1], kind="dismiss", value="", author="max", role="maintainer",
                             source_event_id="max:1"))  # fmt: skip
        session.add(Feedback(finding_id=ids[3], kind="severity", value="trivial", author="eve", role="guest",
                             source_event_id="eve:3"))  # fmt: skip  # a guest's: labels nothing
    rows = acceptance(engine)
    assert all(row.pop("suppressed") == 0 for row in rows)  # none held back here
    assert rows == feedback_stats(labelled_findings(engine))
    assert sum(row["findings"] for row in rows) == 120
    assert len(rows) == 4
    assert acceptance(engine, "nobody/else") == []
