"""Golden held-out sets: the admin's own examples of a task, which promotion must not regress on.

Reviewers' labels fill the training set and the reviewers' held-out split alike, so whoever can
label can move both; a golden set is read only from the admin's files (``flywheel golden add``,
``flywheel run --heldout``) and no feedback changes it. Each task's sets are versioned: the same
examples again are the same version (by digest), changed ones a new version, and the newest is
the one every run and promotion is judged by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from bot.models import GoldenExample, GoldenSet, Task
from flywheel.data import DataError, Example

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
    newest = _newest_row(session, task)
    fingerprint = digest(list(unique.values()))
    if newest is not None and newest.digest == fingerprint:
        return newest, False
    row = GoldenSet(
        task=task.value,
        version=(newest.version if newest else 0) + 1,
        source=source[:SOURCE_CHARS],
        digest=fingerprint,
        size=len(unique),
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    session.add_all(
        GoldenExample(set_id=row.id, key=key, question=e.question, answer=e.answer)
        for key, e in unique.items()
    )
    session.commit()
    session.refresh(row)
    return row, True


def _newest_row(session: Session, task: Task) -> GoldenSet | None:
    return session.exec(
        select(GoldenSet).where(GoldenSet.task == task.value).order_by(col(GoldenSet.version).desc())
    ).first()


def newest(session: Session, task: Task) -> Golden | None:
    """The golden set runs and promotions are judged by; None when the admin has given none."""
    row = _newest_row(session, task)
    if row is None:
        return None
    rows = session.exec(
        select(GoldenExample).where(GoldenExample.set_id == row.id).order_by(col(GoldenExample.id))
    ).all()
    return Golden(task, row.version, row.source, [Example(r.question, r.answer) for r in rows])


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
