"""Promotion judged on the blind audit set with the admin's golden file: audit labels join the golden
set as a version of their own, a candidate the admin's file alone would promote is refused once the
audit labels show it regressing, and reviewers' signals on audited findings change neither the audit
labels nor the training data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from bot.config import load_settings
from bot.events import DOWN, SignalKind
from bot.feedback import audit_set
from bot.feedback.audit_set import AuditLabel
from bot.feedback.signals import record_signal
from bot.models import AuditItem, Finding, FindingStatus, GoldenSet, Project, Review, Task
from flywheel import data, gate, golden, registry
from flywheel.data import Example
from flywheel.metrics import DEFAULT_COSTS
from tests.flywheel.test_flywheel import BASE, SEVERITY, Student, examples, version
from tests.support.db import session_scope
from tests.support.scripted_server import scripted_server

RULE = gate.Rule(margin=0.02, alpha=0.05, min_items=1)  # these sets are small; 200 by default


def audited(engine: sa.Engine, items: list[Example], start: int = 0) -> list[int]:
    """Findings asking ``items``' questions, drawn into the audit set and labelled with their answers
    by an auditor; their ids."""
    ids, drawn = [], []
    with session_scope(engine) as session:
        project = session.get(Project, 1) or Project(
            forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s"
        )
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=1, head_sha="a" * 40, mr_author="alice")
        session.add(review)
        session.flush()
        for n, item in enumerate(items, start):
            question = item.question
            finding = Finding(review_id=review.id, path="a.py", line=n, severity="minor", title=f"t{n}",
                              review=question["review"], code=question["code"], fingerprint=f"fp{n}",
                              model_version="base", status=FindingStatus.POSTED)  # fmt: skip
            session.add(finding)
            session.flush()
            assert finding.id is not None
            ids.append(finding.id)
            drawn_item = AuditItem(finding_id=finding.id, fingerprint=finding.fingerprint, week="2026-W48",
                                   stratum="minor/above")  # fmt: skip
            session.add(drawn_item)
            session.flush()
            assert drawn_item.id is not None
            drawn.append(drawn_item.id)
    for item_id, item in zip(drawn, items, strict=True):
        audit_set.record(engine, item_id, AuditLabel(item.answer["issue_type"]), "cli:ana")
    return ids


def test_audit_labels_join_the_golden_set_as_versions_of_their_own(engine: sa.Engine) -> None:
    admins, first, more = examples(4, seed=21), examples(3, seed=22), examples(2, seed=23)
    with Session(engine) as session:
        golden.add(session, Task.SEVERITY, admins, "golden.jsonl")
    audited(engine, first)
    with Session(engine) as session:
        gold = golden.newest(session, Task.SEVERITY)
        assert gold is not None
        assert (gold.version, gold.source) == (2, "golden.jsonl + audit set")
        assert gold.keys == {e.key for e in admins + first}
        assert {e.key: e.answer for e in gold.examples} == {e.key: e.answer for e in admins + first}
        again = golden.newest(session, Task.SEVERITY)
        assert again is not None
        assert again.version == 2  # the same labels: the same version
        assert golden.newest(session, Task.EXPLANATION) is None
    audited(engine, more, start=3)
    with Session(engine) as session:
        third = golden.newest(session, Task.SEVERITY)
        assert third is not None
        assert (third.version, len(third.examples)) == (3, 9)
        renewed, new = golden.add(session, Task.SEVERITY, admins[:2], "smaller.jsonl")  # the admin's new file
        assert (renewed.version, new) == (4, True)
        fourth = golden.newest(session, Task.SEVERITY)
        assert fourth is not None
        assert (fourth.version, len(fourth.examples), fourth.source) == (5, 7, "smaller.jsonl + audit set")
        rows = golden.sets(session, Task.SEVERITY)
        assert [(r.version, r.audit_labels) for r in rows] == [(1, 0), (2, 3), (3, 5), (4, 0), (5, 5)]
        assert (
            golden.add(session, Task.SEVERITY, admins[:2], "smaller.jsonl")[0].version == 4
        )  # no new version


def judge(flywheel_dir: Path, url: str, engine: sa.Engine) -> gate.Verdict:
    settings = load_settings(student_base_url=url, student_model=BASE, flywheel_dir=flywheel_dir)
    with Session(engine) as session:
        return asyncio.run(registry.judge(settings, session, "severity-v1", RULE, DEFAULT_COSTS))


def test_the_gate_judges_on_the_audit_labels_and_reviewers_cannot_move_them(
    engine: sa.Engine, tmp_path: Path
) -> None:
    admins, labelled = examples(4, seed=31), examples(8, seed=32)
    with Session(engine) as session:
        golden.add(session, Task.SEVERITY, admins, "golden.jsonl")
        version(session, "severity-v1", run_id=1)
    data.write_jsonl(
        tmp_path / "runs" / "1" / registry.TEST_FILE, examples(6, seed=33)
    )  # its run's test part
    # The candidate is right on the test part and the admin's questions, wrong on the audited ones;
    # the base the reverse.
    with scripted_server(Student(labelled)) as url:
        before = judge(tmp_path, url, engine)
        assert before.passed, before.reason  # the admin's file alone would promote it
        ids = audited(engine, labelled)
        after = judge(tmp_path, url, engine)
    assert not after.passed
    assert "severity-v1 scores 0.333 on golden set v2" in after.reason  # 4 of 12 right
    assert f"{BASE} scores 0.667" in after.reason

    # A trusted reviewer corrects and 👎s two audited findings, as they would a posted one.
    with session_scope(engine) as session:
        for n, finding_id in enumerate(ids[:2]):
            record_signal(
                session, finding_id, SignalKind.SEVERITY, "trivial", "bob", f"s{n}", role="developer"
            )
            record_signal(session, finding_id, SignalKind.REACTION, DOWN, "bob", f"r{n}", role="developer")
    with Session(engine) as session:
        gold = golden.newest(session, Task.SEVERITY)
        assert gold is not None
        assert gold.version == 2  # unchanged: the same items, the auditor's labels
        assert {e.key: e.answer for e in gold.examples} == {e.key: e.answer for e in admins + labelled}
        assert session.exec(sa.select(sa.func.count()).select_from(GoldenSet)).one()[0] == 2
    assert data.feedback_examples(engine, SEVERITY) == []  # an audited finding is never a training example
    assert data.complaints(engine) == []  # nor teacher material
