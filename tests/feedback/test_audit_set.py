"""The blind audit set: below-threshold findings kept (never posted), each complete week's stratified
sample drawn once, the terminal's blind labelling (the model's severity shown only after the label,
hostile text inert) and labels that reviewers' signals cannot reach."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.events import DOWN, SignalKind
from bot.feedback import audit_set
from bot.feedback.audit_set import AuditLabel, allocate
from bot.feedback.labels import labelled_findings
from bot.feedback.signals import record_signal
from bot.models import AuditEntry, AuditItem, Feedback, Finding, FindingStatus, Project, Review
from tests.support.db import session_scope
from tests.support.reviewed_site import QUERY, SERVICE, Student, open_site

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)  # a Monday: the week before is 2026-W48
LAST_WEEK = NOW - timedelta(days=5)
HOSTILE_TITLE = "[bold red]Boom[/bold red] <b>x</b>"
HOSTILE_REVIEW = "Closes \x1b[31mnothing\x1b[0m [link=http://evil.test]here[/link]\nsecond line"


def test_findings_below_the_threshold_are_kept_and_never_posted(engine: sa.Engine) -> None:
    with open_site("gitlab", engine) as site:
        site.project(severity_threshold="minor")  # the debug print is rated trivial: below it
        number = site.open_mr({"svc/query.py": QUERY, "svc/client.py": SERVICE})
        student = Student()
        review = site.review(number, student)
        bodies = site.bodies(number)
        summary = site.summary(number)
        assert len(site.comments(number)) == 2
    assert not any("debug print" in body.lower() for body in bodies)
    assert summary is not None
    assert "| 1 | 1 | 0 | — |" in summary  # the counts as before: trivial was not looked for
    assert review.report["findings"] == {"critical": 1, "major": 1, "minor": 0, "trivial": 0}
    with Session(engine) as session:
        rows = session.exec(
            select(Finding).where(Finding.review_id == review.id).order_by(col(Finding.id))
        ).all()
    statuses = Counter(row.status for row in rows)
    assert statuses == {FindingStatus.POSTED: 2, FindingStatus.BELOW: 1}
    [kept] = [row for row in rows if row.status == FindingStatus.BELOW]
    assert (kept.title, kept.severity, kept.explanation) == ("Debug print left in code", "trivial", "")
    assert kept.forge_comment_id is None
    assert "print(name)" in kept.code  # what the auditor will be shown
    kinds = Counter(r["response_format"]["json_schema"]["name"] for r in student.requests)
    assert kinds["ExplainAnswer"] == 2  # no call spent explaining what is not posted


def add_finding(
    session: Session,
    on: Review,
    severity: str,
    status: str,
    n: int,
    when: datetime = LAST_WEEK,
    **values: Any,
) -> Finding:
    given = {"path": f"app/m{n}.py", "line": n, "title": f"Issue {n}", "review": f"Review {n}.",
             "code": f"{n:>6} +x = {n}", "fingerprint": f"fp-{n}", **values}  # fmt: skip
    row = Finding(review_id=on.id, severity=severity, status=status, model_version="base", created_at=when,
                  **given)  # fmt: skip
    session.add(row)
    session.flush()
    return row


def a_review(session: Session) -> Review:
    project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
    session.add(project)
    session.flush()
    review = Review(project_id=project.id, mr_number=4, head_sha="a" * 40, mr_author="alice")
    session.add(review)
    session.flush()
    return review


def test_the_allocation_gives_every_stratum_one_then_shares_by_size() -> None:
    sizes = {"minor/above": 30, "critical/above": 2, "trivial/below": 3, "major/below": 1, "major/above": 0}
    # one each (4); the other 4 by what is left (29, 1, 2, 0 of 32): 3.6, 0.1, 0.3 → 3, 0, 0, then
    # the largest remainder (minor's .6) takes the last one
    assert allocate(sizes, 8) == {
        "minor/above": 5, "critical/above": 1, "trivial/below": 1, "major/below": 1, "major/above": 0,
    }  # fmt: skip
    assert allocate(sizes, 2) == {  # fewer items than strata: the rarest strata first
        "minor/above": 0, "critical/above": 1, "trivial/below": 0, "major/below": 1, "major/above": 0,
    }  # fmt: skip
    assert allocate({"a": 2, "b": 1}, 10) == {"a": 2, "b": 1}  # a small week is drawn whole


def test_each_complete_week_is_drawn_once_stratified_and_the_same_whoever_draws(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        review = a_review(session)
        for n in range(30):
            add_finding(session, review, "minor", FindingStatus.POSTED, n)
        add_finding(session, review, "minor", FindingStatus.POSTED, 100, fingerprint="fp-0")  # a re-post
        for n in (40, 41):
            add_finding(session, review, "critical", FindingStatus.POSTED, n)
        for n in (50, 51, 52):
            add_finding(session, review, "trivial", FindingStatus.BELOW, n)
        add_finding(session, review, "major", FindingStatus.BELOW, 60)
        add_finding(session, review, "major", FindingStatus.PENDING, 61)  # never posted or kept: not drawn
        add_finding(session, review, "critical", FindingStatus.POSTED, 70, when=NOW)  # this week: not yet
    assert audit_set.draw_due(engine, 8, NOW) == 8
    assert audit_set.draw_due(engine, 8, NOW) == 0  # drawn once
    with Session(engine) as session:
        items = session.exec(select(AuditItem).order_by(col(AuditItem.id))).all()
    assert {i.week for i in items} == {"2026-W48"}
    assert Counter(i.stratum for i in items) == {
        "minor/above": 5, "critical/above": 1, "trivial/below": 1, "major/below": 1,
    }  # fmt: skip
    assert len({i.fingerprint for i in items}) == 8
    order = [i.stratum for i in items]
    assert order != sorted(order)  # the queue's order does not tell the model's severity
    first = [i.finding_id for i in items]
    with session_scope(engine) as session:
        session.execute(sa.delete(AuditItem))
    assert audit_set.draw_due(engine, 8, NOW) == 8
    with Session(engine) as session:
        assert [i.finding_id for i in session.exec(select(AuditItem).order_by(col(AuditItem.id)))] == first
    # The week after, a copy of an audited finding is not drawn again.
    later = NOW + timedelta(weeks=1)
    with session_scope(engine) as session:
        copy = session.get(Finding, first[0])
        assert copy is not None
        add_finding(
            session, review, copy.severity, FindingStatus.POSTED, 200, when=NOW, fingerprint=copy.fingerprint
        )
        add_finding(session, review, "minor", FindingStatus.POSTED, 201, when=NOW)
    assert audit_set.draw_due(engine, 8, later) == 1 + 1  # fp-201 and the critical of NOW


def cli_env(engine: sa.Engine) -> dict[str, str]:
    return {"REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False), "COLUMNS": "200"}


def shown(engine: sa.Engine) -> str:
    """The terminal's output for the next item, quitting at the prompt."""
    result = CliRunner().invoke(cli, ["feedback", "audit"], input="quit\n", env=cli_env(engine))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_terminal_shows_an_item_blind_and_the_models_severity_only_after_the_label(
    engine: sa.Engine,
) -> None:
    when = datetime.now(UTC) - timedelta(weeks=1)  # the command draws the complete weeks before today's
    week = audit_set.iso_week(when.date())
    with session_scope(engine) as session:
        review = a_review(session)
        finding = add_finding(session, review, "critical", FindingStatus.POSTED, 7, when, title=HOSTILE_TITLE,
                              review=HOSTILE_REVIEW, explanation="EXPLAINED-as-critical")  # fmt: skip
        finding_id = finding.id
    blind = shown(engine)
    assert f"audit item 1 · week {week} · g/app !4 app/m7.py:7" in blind
    assert "[bold red]Boom[/bold red] <b>x</b>" in blind  # rich markup shown, not applied
    assert "[link=http://evil.test]here[/link]" in blind
    assert "\x1b" not in blind  # the escape sequence is dropped
    assert "\n     7 +x = 7\n" in blind  # the code, indentation kept
    assert "EXPLAINED" not in blind
    # The same item rated otherwise, below the threshold, looks exactly the same.
    with session_scope(engine) as session:
        row = session.get(Finding, finding_id)
        assert row is not None
        row.severity, row.status = "trivial", FindingStatus.BELOW
        session.add(row)
    assert shown(engine) == blind
    with session_scope(engine) as session:
        row = session.get(Finding, finding_id)
        assert row is not None
        row.severity, row.status = "critical", FindingStatus.POSTED
        session.add(row)

    labelled = CliRunner().invoke(cli, ["feedback", "audit"], input="Major\n", env=cli_env(engine))
    assert labelled.exit_code == 0, labelled.output
    before, after = labelled.output.split("label (critical, major", 1)
    assert "critical" not in before
    assert "recorded major; the model had said critical: over-rated" in after
    assert "1 labelled as cli:" in after
    assert "nothing is waiting" in after
    with Session(engine) as session:
        [item] = session.exec(select(AuditItem)).all()
        entry = session.exec(select(AuditEntry)).one()
        assert session.exec(select(Feedback)).first() is None  # held apart from reviewers' feedback
    assert (item.label, item.auditor is not None and item.auditor.startswith("cli")) == ("major", True)
    assert (entry.action, entry.after) == ("audit_set.label", {"label": "major"})

    stats = CliRunner().invoke(cli, ["feedback", "audit", "--stats", "--format", "json"], env=cli_env(engine))
    figures = json.loads(stats.output)
    assert (figures["labelled"], figures["waiting"], figures["agreement"]["over-rated"]) == (1, 0, 1)
    assert figures["matrix"]["critical"]["major"] == 1
    listed = CliRunner().invoke(cli, ["feedback", "audit", "--list"], env=cli_env(engine))
    assert "[bold red]Boom[/bold red]" in listed.output


def test_a_label_is_final_and_reviewers_signals_never_reach_it(engine: sa.Engine) -> None:
    with session_scope(engine) as session:
        review = a_review(session)
        finding = add_finding(session, review, "minor", FindingStatus.POSTED, 3)
        copy = add_finding(session, review, "minor", FindingStatus.POSTED, 4, fingerprint=finding.fingerprint)
        other = add_finding(session, review, "minor", FindingStatus.POSTED, 5)
        ids = (finding.id, copy.id, other.id)
        session.add(AuditItem(finding_id=finding.id, fingerprint=finding.fingerprint, week="2026-W48",
                              stratum="minor/above"))  # fmt: skip
    done = audit_set.record(engine, 1, AuditLabel.CRITICAL, "cli:ana")
    assert done.words() == "recorded critical; the model had said minor: under-rated"
    with pytest.raises(audit_set.AuditError, match="labelled critical by cli:ana already; labels are final"):
        audit_set.record(engine, 1, AuditLabel.TRIVIAL, "cli:bo")
    with session_scope(engine) as session:  # a trusted reviewer corrects and 👎s the finding and its copy
        for n, finding_id in enumerate(ids):
            assert finding_id is not None
            record_signal(
                session, finding_id, SignalKind.SEVERITY, "trivial", "bob", f"s{n}", role="developer"
            )
            record_signal(session, finding_id, SignalKind.REACTION, DOWN, "bob", f"r{n}", role="developer")
    with Session(engine) as session:
        [item] = session.exec(select(AuditItem)).all()
    assert (item.label, item.auditor) == ("critical", "cli:ana")
    every = {i.finding.id for i in labelled_findings(engine)}
    for_training = {i.finding.id for i in labelled_findings(engine, include_audited=False)}
    assert every == set(ids)
    assert for_training == {ids[2]}  # the audited finding and its re-posted copy are left out
