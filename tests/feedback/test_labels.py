"""Feedback signals: commands, one row per source, label states, export and statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlmodel import Session, func, select

from bot.events import Command, CommandError, SignalKind, parse_command
from bot.feedback.labels import LabelState, label_state, labelled_findings, severity_examples
from bot.feedback.signals import record_signal
from bot.feedback.stats import feedback_stats
from bot.models import Feedback, Finding, Project, Review, Severity
from tests.support.db import session_scope

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/severity minor", Command(SignalKind.SEVERITY, "minor")),
        ("Thanks!\n/SEVERITY Critical because it leaks keys", Command(SignalKind.SEVERITY, "critical")),
        (
            "/dismiss not an issue, the input is trusted",
            Command(SignalKind.DISMISS, "not an issue, the input is trusted"),
        ),
        ("/dismiss", Command(SignalKind.DISMISS, "")),
        ("looks right to me", None),
        ("see /severity docs", None),  # not at the start of a line
    ],
)
def test_parse_command(text: str, command: Command | None) -> None:
    assert parse_command(text) == command


def test_a_bad_severity_says_how_to_write_it() -> None:
    with pytest.raises(CommandError, match="critical, major, minor, trivial"):
        parse_command("/severity huge")


def signal(
    kind: SignalKind, value: str = "", minutes: int = 0, by: str = "ana", role: str = "developer"
) -> Feedback:
    when = T0 + timedelta(minutes=minutes)
    return Feedback(finding_id=1, kind=kind, value=value, author=by, role=role, id=minutes,
                    source_event_id=f"{by}-{minutes}", created_at=when)  # fmt: skip


UP, DOWN, SEV, DISMISS = SignalKind.REACTION, SignalKind.REACTION, SignalKind.SEVERITY, SignalKind.DISMISS
PUSH = signal(SignalKind.ADDRESSED, by="", role="")  # an addressing push: no author, no role

# The label rule, case by case: (trusted signals on a major finding, label state, label). Only a
# command gives a severity label; a 👍 or a push says the finding was valid, not that "major" is right.
LABEL_RULE = {
    "no signal": ([], LabelState.UNLABELLED, None),
    "replies and resolution say nothing": (
        [signal(SignalKind.REPLY, "hm"), signal(SignalKind.RESOLVED, "true", 1)],
        LabelState.UNLABELLED,
        None,
    ),
    "a 👍 accepts the finding, not its severity": ([signal(UP, "+1")], LabelState.ACCEPTED, None),
    "a revoked 👍 says nothing": ([signal(UP, "")], LabelState.UNLABELLED, None),
    "a 👎 alone disputes": ([signal(DOWN, "-1")], LabelState.DISPUTED, None),
    "👍s and a 👎 of the same rank dispute": (
        [signal(UP, "+1", 0, "ana"), signal(UP, "+1", 1, "bo"), signal(DOWN, "-1", 2, "cy")],
        LabelState.DISPUTED,
        None,
    ),
    "a maintainer's 👍 outranks a developer's 👎": (
        [signal(UP, "+1", 0, "mo", "maintainer"), signal(DOWN, "-1", 1, "cy")],
        LabelState.ACCEPTED,
        None,
    ),
    "one reviewer's later reaction replaces their earlier one": (
        [signal(DOWN, "-1", 0), signal(UP, "+1", 1)],
        LabelState.ACCEPTED,
        None,
    ),
    "a push that addresses it accepts the finding, not its severity": ([PUSH], LabelState.ACCEPTED, None),
    "a 👎 outranks addressed": ([signal(DOWN, "-1"), PUSH], LabelState.DISPUTED, None),
    "... pushed after the 👎 too": (
        [signal(DOWN, "-1"), signal(SignalKind.ADDRESSED, "", 5, "", "")],
        LabelState.DISPUTED,
        None,
    ),
    "a 👍 and a push accept": ([signal(UP, "+1"), PUSH], LabelState.ACCEPTED, None),
    "/severity of the bot's own severity outranks a 👍 and a push": (
        [signal(UP, "+1", 0, "ana"), PUSH, signal(SEV, "major", 1, "bo")],
        LabelState.CONFIRMED,
        "major",
    ),
    "a correction outranks a 👍 and a push": (
        [signal(UP, "+1", 0, "ana"), PUSH, signal(SEV, "minor", 1, "bo")],
        LabelState.CORRECTED,
        "minor",
    ),
    "a command outranks a 👎": (
        [signal(DOWN, "-1"), signal(SEV, "minor", 1, "bo")],
        LabelState.CORRECTED,
        "minor",
    ),
    "a command outranks addressed": ([signal(DISMISS, "", 1), PUSH], LabelState.DISMISSED, None),
    "/severity of the bot's own severity confirms": ([signal(SEV, "major")], LabelState.CONFIRMED, "major"),
    "one reviewer's later command replaces their earlier one": (
        [signal(SEV, "minor", 1), signal(DISMISS, "", 2)],
        LabelState.DISMISSED,
        None,
    ),
    "... in either order": (
        [signal(DISMISS, "", 1), signal(SEV, "trivial", 2)],
        LabelState.CORRECTED,
        "trivial",
    ),
    "two developers agreeing": (
        [signal(SEV, "minor", 0, "ana"), signal(SEV, "minor", 1, "bo")],
        LabelState.CORRECTED,
        "minor",
    ),
    "two developers' corrections to different severities dispute": (
        [signal(SEV, "minor", 0, "ana"), signal(SEV, "trivial", 1, "bo")],
        LabelState.DISPUTED,
        None,
    ),
    "a correction and a dismissal of the same rank dispute": (
        [signal(SEV, "minor", 0, "ana"), signal(DISMISS, "", 1, "bo")],
        LabelState.DISPUTED,
        None,
    ),
    "a maintainer's correction outranks a developer's, even an earlier one": (
        [signal(SEV, "critical", 0, "mo", "maintainer"), signal(SEV, "trivial", 1, "cy")],
        LabelState.CORRECTED,
        "critical",
    ),
    "an owner's correction outranks a maintainer's dismissal": (
        [signal(SEV, "minor", 0, "ow", "owner"), signal(DISMISS, "", 1, "mo", "maintainer")],
        LabelState.CORRECTED,
        "minor",
    ),
}


@pytest.mark.parametrize(("signals", "state", "label"), LABEL_RULE.values(), ids=LABEL_RULE.keys())
def test_label_state(signals: list[Feedback], state: LabelState, label: str | None) -> None:
    result = label_state("major", signals)
    assert result.state == state
    assert (result.severity.value if result.severity else None) == label


def cli_env(engine: sa.Engine) -> dict[str, str]:
    """The environment of a ``reviewbot`` command on ``engine``'s database (PostgreSQL needs a key)."""
    database = engine.url.render_as_string(hide_password=False)
    return {
        **os.environ,
        "REVIEWBOT_DATABASE_URL": database,
        "REVIEWBOT_SECRET_KEY": Fernet.generate_key().decode(),
    }


def add_finding(engine: sa.Engine, severity: str = "major", model: str = "base") -> int:
    with session_scope(engine) as session:
        project = session.exec(select(Project)).first()
        if project is None:
            project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
            session.add(project)
            session.flush()
        review = Review(project_id=project.id, mr_number=1, head_sha="a" * 40)
        session.add(review)
        session.flush()
        finding = Finding(review_id=review.id, path="app.py", line=3, severity=severity, title="Leak",
                          review="The handle is never closed.", code="  3 +f = open(p)",
                          fingerprint="f" * 16, model_version=model)  # fmt: skip
        session.add(finding)
        session.flush()
        assert finding.id is not None
        return finding.id


def test_the_same_source_updates_its_row(engine: sa.Engine) -> None:
    finding = add_finding(engine)
    with session_scope(engine) as session:
        record_signal(session, finding, SignalKind.REACTION, "+1", "ana", "gitlab:award:7", role="developer")
    with session_scope(engine) as session:  # revoked
        record_signal(session, finding, SignalKind.REACTION, "", "ana", "gitlab:award:7", role="developer")
        record_signal(session, finding, SignalKind.REACTION, "-1", "bo", "gitlab:award:8", role="developer")
    with Session(engine) as session:
        rows = session.exec(select(Feedback).order_by(Feedback.source_event_id)).all()
        assert [(r.value, r.author) for r in rows] == [("", "ana"), ("-1", "bo")]
        assert session.exec(select(func.count()).select_from(Feedback)).one() == 2


def test_export_holds_only_hard_labels(engine: sa.Engine, tmp_path: Path) -> None:
    """Only findings whose severity a reviewer named: a 👍 or an addressing push (the finding was
    valid) is no severity label, else the model would be judged on its own answers."""
    confirmed, corrected, liked, addressed, dismissed, silent = (add_finding(engine) for _ in range(6))
    with session_scope(engine) as session:
        record_signal(session, confirmed, SignalKind.SEVERITY, "major", "ana", "a1", role="developer")
        record_signal(session, corrected, SignalKind.SEVERITY, "minor", "bo", "c1", role="developer")
        record_signal(session, liked, SignalKind.REACTION, "+1", "ana", "l1", role="developer")
        record_signal(session, addressed, SignalKind.ADDRESSED, "", "", "p1")
        record_signal(session, dismissed, SignalKind.DISMISS, "trusted input", "bo", "d1", role="developer")
    examples = list(severity_examples(labelled_findings(engine)))
    assert [(e["meta"]["finding_id"], e["answer"]["issue_type"]) for e in examples] == [
        (confirmed, "major"),
        (corrected, "minor"),
    ]
    assert examples[1]["question"] == {"code": "  3 +f = open(p)", "review": "The handle is never closed."}
    assert examples[1]["meta"]["label_state"] == "corrected"
    assert examples[1]["meta"]["model_version"] == "base"
    assert examples[1]["meta"]["fingerprint"] == "f" * 16  # the split's line-number-blind group

    env = cli_env(engine)
    out = tmp_path / "severity.jsonl"
    command = [sys.executable, "-m", "bot.cli", "feedback", "export", "--task", "severity", "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 severity examples" in result.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == examples
    listed = subprocess.run(
        [*command[:4], "list", "--format", "json"], env=env, capture_output=True, text=True
    )
    states = {row["finding_id"]: row["label_state"] for row in json.loads(listed.stdout)}
    assert states == {
        confirmed: "confirmed",
        corrected: "corrected",
        liked: "accepted",
        addressed: "accepted",
        dismissed: "dismissed",
        silent: "unlabelled",
    }


def test_stats_per_model_version_and_severity(engine: sa.Engine) -> None:
    ids = [add_finding(engine, "major", "severity-v1") for _ in range(4)] + [
        add_finding(engine, "minor", "severity-v2")
    ]
    with session_scope(engine) as session:
        record_signal(session, ids[0], SignalKind.REACTION, "+1", "ana", "r0")
        record_signal(session, ids[1], SignalKind.SEVERITY, "minor", "bo", "r1", role="developer")
        record_signal(session, ids[2], SignalKind.ADDRESSED, "", "", "r2")
    rows = feedback_stats(labelled_findings(engine))
    assert rows[0] == {
        "project": "g/app", "model_version": "severity-v1", "severity": "major", "findings": 4,
        "with_feedback_rate": 0.75, "thumbs_up_rate": 0.25, "corrected_rate": 0.25, "dismissed_rate": 0.0,
        "addressed_rate": 0.25,
    }  # fmt: skip
    assert rows[1]["model_version"] == "severity-v2"
    assert rows[1]["with_feedback_rate"] == 0.0
    assert Severity(rows[1]["severity"]) is Severity.MINOR


def test_stats_plot_acceptance_per_model_version(engine: sa.Engine, tmp_path: Path) -> None:
    finding = add_finding(engine, "major", "severity-v1")
    with session_scope(engine) as session:
        record_signal(session, finding, SignalKind.REACTION, "+1", "ana", "r0", role="developer")
    env = cli_env(engine)
    env["COLUMNS"] = "200"  # one line per row
    plot = tmp_path / "acceptance.png"
    command = [sys.executable, "-m", "bot.cli", "feedback", "stats", "--plot", str(plot)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "severity-v1" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_push_that_removes_the_line_addresses_the_finding(engine: sa.Engine) -> None:
    from bot.diff import parse_diff
    from bot.review.job import _mark_addressed

    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
        session.add(project)
        session.flush()
        old = Review(project_id=project.id, mr_number=1, head_sha="a" * 40, status="done")
        new = Review(project_id=project.id, mr_number=1, head_sha="b" * 40)
        session.add_all([old, new])
        session.flush()
        common = {
            "review_id": old.id,
            "severity": "major",
            "title": "t",
            "review": "r",
            "model_version": "base",
        }
        for path, text in [
            ("a.py", "x = eval(s)"),
            ("a.py", "y = 2"),
            ("b.py", "z = 3"),
            ("gone.py", "w = 4"),
        ]:
            session.add(Finding(path=path, line=1, anchor_text=text, fingerprint=path + text, **common))
        new_id = new.id
    # The push rewrote a.py (eval gone, y kept); b.py's diff is unchanged; gone.py left the diff.
    pushed = parse_diff(
        "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1,2 @@\n-x = 1\n+x = int(s)\n+y = 2\n"
        "diff --git a/b.py b/b.py\n--- a/b.py\n+++ b/b.py\n@@ -1 +1 @@\n-z = 0\n+z = 3\n"
    )
    with Session(engine) as session:
        review = session.get(Review, new_id)
        assert review is not None
        _mark_addressed(session, review, pushed, changed_paths={"a.py"})
        session.commit()
    with Session(engine) as session:
        rows = session.exec(
            select(Finding.anchor_text).join(Feedback).where(Feedback.kind == "addressed")
        ).all()
    assert sorted(rows) == ["w = 4", "x = eval(s)"]


def test_acceptance_figures_on_metrics(engine: sa.Engine) -> None:
    from fastapi.testclient import TestClient

    from bot.api import create_app
    from bot.config import load_settings

    class NoDeliveries:  # the intake's queue: this test sends no webhook
        def wake(self) -> None:
            raise AssertionError("no delivery was sent")

    up = add_finding(engine, "major", "severity-v3")
    add_finding(engine, "major", "severity-v3")  # a finding nobody reacted to
    with session_scope(engine) as session:
        record_signal(session, up, SignalKind.REACTION, "+1", "ana", "m1", role="developer")
    with TestClient(create_app(engine, NoDeliveries(), load_settings(public_metrics=True))) as client:
        exposed = client.get("/metrics").text
    labels = 'model_version="severity-v3",project="g/app",severity="major"'
    assert f"reviewbot_findings{{{labels}}} 2.0" in exposed
    assert f"reviewbot_feedback_thumbs_up_ratio{{{labels}}} 0.5" in exposed
    assert f"reviewbot_feedback_dismissed_ratio{{{labels}}} 0.0" in exposed
