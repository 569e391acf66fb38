"""Each finding's label, from its reviewers' signals, and the labelled examples the flywheel trains on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.events import DOWN, UP, SignalKind
from bot.models import Feedback, Finding, Project, Review, Severity


class LabelState(StrEnum):
    CONFIRMED = "confirmed"
    CORRECTED = "corrected"
    DISMISSED = "dismissed"
    DISPUTED = "disputed"
    UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Label:
    state: LabelState
    severity: Severity | None  # the label for training: None unless confirmed or corrected


def label_state(finding_severity: str, signals: Sequence[Feedback]) -> Label:
    """The label a finding's signals give it. The rule, in order:

    1. The reviewers' latest command wins: ``/dismiss`` → dismissed; ``/severity X`` → corrected to
       X (confirmed, when X is the severity the bot gave).
    2. Otherwise, a finding whose lines a later push changed (addressed) is confirmed.
    3. Otherwise reactions that stand (not revoked): 👎 → disputed (whatever 👍 there are beside
       it); 👍 alone → confirmed.
    4. Otherwise — no signal, or only replies and thread resolution — unlabelled.
    """
    commands = [s for s in signals if s.kind in (SignalKind.SEVERITY, SignalKind.DISMISS)]
    if commands:
        latest = max(commands, key=lambda s: (s.created_at, s.id or 0))
        if latest.kind == SignalKind.DISMISS:
            return Label(LabelState.DISMISSED, None)
        corrected = Severity(latest.value)
        state = LabelState.CONFIRMED if corrected == finding_severity else LabelState.CORRECTED
        return Label(state, corrected)
    if any(s.kind == SignalKind.ADDRESSED for s in signals):
        return Label(LabelState.CONFIRMED, Severity(finding_severity))
    reactions = {s.value for s in signals if s.kind == SignalKind.REACTION}
    if DOWN in reactions:
        return Label(LabelState.DISPUTED, None)
    if UP in reactions:
        return Label(LabelState.CONFIRMED, Severity(finding_severity))
    return Label(LabelState.UNLABELLED, None)


@dataclass(frozen=True)
class LabelledFinding:
    finding: Finding
    project: Project
    label: Label
    signals: list[Feedback]


def labelled_findings(
    engine: sa.Engine, project_path: str | None = None, since: datetime | None = None
) -> Iterator[LabelledFinding]:
    """Every finding (of one project, created since a date) with its signals and label."""
    with Session(engine) as session:
        query = (
            select(Finding, Project)
            .join(Review, col(Finding.review_id) == col(Review.id))
            .join(Project, col(Review.project_id) == col(Project.id))
            .order_by(col(Finding.id))
        )
        if project_path is not None:
            query = query.where(Project.path == project_path)
        if since is not None:
            query = query.where(col(Finding.created_at) >= since)
        rows = session.exec(query).all()
        ids = [finding.id for finding, _ in rows]
        signals: dict[int, list[Feedback]] = defaultdict(list)
        for signal in session.exec(select(Feedback).where(col(Feedback.finding_id).in_(ids))).all():
            signals[signal.finding_id].append(signal)
    for finding, project in rows:
        assert finding.id is not None
        found = signals.get(finding.id, [])
        yield LabelledFinding(finding, project, label_state(finding.severity, found), found)


def severity_examples(findings: Iterable[LabelledFinding]) -> Iterator[dict[str, Any]]:
    """The flywheel's format for the severity task: confirmed and corrected findings only."""
    for item in findings:
        if item.label.severity is None:
            continue
        yield {
            "question": {"code": item.finding.code, "review": item.finding.review},
            "answer": {"issue_type": item.label.severity.value},
            "meta": {
                "finding_id": item.finding.id,
                "project": item.project.path,
                "model_version": item.finding.model_version,
                "label_state": item.label.state.value,
                "signals": [{"kind": s.kind, "value": s.value, "author": s.author} for s in item.signals],
            },
        }
