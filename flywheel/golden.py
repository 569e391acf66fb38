"""Golden held-out sets: the admin's own examples of a task, which promotion must not regress on.

Reviewers' labels fill the training set and the reviewers' held-out split alike, so whoever can
label can move both; a golden set is read only from the admin's files (``flywheel golden add``,
``flywheel run --heldout``) and from the blind audit set's labels (``bot.feedback.audit_set``: trusted
auditors', given without seeing the model's severity), and no feedback changes it. Each task's sets
are versioned: the same examples again are the same version (by digest), changed ones a new version,
and the newest is the one every run and promotion is judged by. The audit labels are added to the
admin's newest file as a version of their own (``audit_labels`` > 0) whenever they changed, so a
recorded golden score always names the exact items it was measured on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.feedback import audit_set
from bot.models import GoldenExample, GoldenSet, Task
from flywheel.data import DataError, Example, parse_example
from flywheel.spec import spec_for

SOURCE_CHARS = 1024  # the column's width


@dataclass(frozen=True)
class Golden:
    """One version of a task's golden set, with its examples."""

    task: Task
    version: int
    source: str
    examples: list[Example]

    @property
    def keys(self) -> set[str]:
        return {e.key for e in self.examples}


def digest(examples: Sequence[Example]) -> str:
    """Of the questions and answers, in no particular order: the same file content, reordered or
    reformatted, is the same set."""
    pairs = sorted((e.key, json.dumps(e.answer, sort_keys=True)) for e in examples)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def add(session: Session, task: Task, examples: Sequence[Example], source: str) -> tuple[GoldenSet, bool]:
    """Store ``examples`` as the task's newest golden set; returns it and whether it is a new
    version (False: the newest version already holds exactly these examples)."""
    if not examples:
        raise DataError(f"{source}: a golden set needs at least one example")
    unique = {e.key: e for e in examples}  # a question twice in a file is one example; the last answer wins
    newest = _newest_row(session, task, files_only=True)
    if newest is not None and newest.digest == digest(list(unique.values())):
        return newest, False
    return _store(session, task, list(unique.values()), source, audit_labels=0), True


def _store(
    session: Session, task: Task, examples: list[Example], source: str, audit_labels: int
) -> GoldenSet:
    """``examples`` (one per key) as the task's next version."""
    newest = _newest_row(session, task)
    row = GoldenSet(
        task=task.value,
        version=(newest.version if newest else 0) + 1,
        source=source[:SOURCE_CHARS],
        digest=digest(examples),
        size=len(examples),
        audit_labels=audit_labels,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    session.add_all(
        GoldenExample(set_id=row.id, key=e.key, question=e.question, answer=e.answer) for e in examples
    )
    session.commit()
    session.refresh(row)
    return row


def _newest_row(session: Session, task: Task, files_only: bool = False) -> GoldenSet | None:
    """The newest version (of the admin's files alone, when ``files_only``)."""
    query = select(GoldenSet).where(GoldenSet.task == task.value)
    if files_only:
        query = query.where(GoldenSet.audit_labels == 0)
    return session.exec(query.order_by(col(GoldenSet.version).desc())).first()


def _examples(session: Session, row: GoldenSet) -> list[Example]:
    rows = session.exec(
        select(GoldenExample).where(GoldenExample.set_id == row.id).order_by(col(GoldenExample.id))
    ).all()
    return [Example(r.question, r.answer) for r in rows]


def _audit_examples(session: Session, task: Task) -> list[Example]:
    """The blind audit set's severity labels, as examples of ``task`` (the severity task's only)."""
    if task != Task.SEVERITY:
        return []
    spec = spec_for(task)
    return [
        parse_example(spec, {"question": question, "answer": answer}, "an audit label")
        for question, answer in audit_set.golden_examples(session)
    ]


def newest(session: Session, task: Task) -> Golden | None:
    """The golden set runs and promotions are judged by: the admin's newest file and the audit set's
    labels (the file's answer wins where both hold a question); None when there is neither. When the
    labels changed since the newest version, that set is stored first as a new version."""
    files = _newest_row(session, task, files_only=True)
    examples = _examples(session, files) if files is not None else []
    audited = {e.key: e for e in _audit_examples(session, task)}
    if not audited:
        return None if files is None else Golden(task, files.version, files.source, examples)
    keys = {e.key for e in examples}
    examples += [e for key, e in audited.items() if key not in keys]
    row = _newest_row(session, task)
    if row is None or row.digest != digest(examples):
        source = f"{files.source} + audit set" if files is not None else "audit set"
        try:
            row = _store(session, task, examples, source, audit_labels=len(examples) - len(keys))
        except sa.exc.IntegrityError:  # another process stored this version just now
            session.rollback()
            return newest(session, task)
    return Golden(task, row.version, row.source, _examples(session, row))


def sets(session: Session, task: Task | None = None) -> Sequence[GoldenSet]:
    """Every version of every task's golden set (or of one task's), oldest first."""
    query = select(GoldenSet).order_by(col(GoldenSet.task), col(GoldenSet.version))
    if task is not None:
        query = query.where(GoldenSet.task == task.value)
    return session.exec(query).all()


def missing_message(task: Task) -> str:
    """What a run without a golden set says instead of promoting."""
    return (
        f"no golden held-out set for {task.value}: add one with "
        f"`reviewbot flywheel golden add --task {task.value} FILE.jsonl` "
        "(or `reviewbot flywheel run --heldout FILE.jsonl`)"
    )
