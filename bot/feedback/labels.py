"""Each finding's label, from its trusted reviewers' signals, and the labelled examples the flywheel
trains on.

Only a command is severity truth: ``/severity X`` corrects (or, when X is the bot's, explicitly
confirms) the severity. A 👍 or a push that addresses the finding says the finding was valid, not that
its severity was right: a weak label, for acceptance figures, never a training or held-out example
(the model would otherwise be judged on its own answers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.events import DOWN, UP, Role, SignalKind
from bot.feedback.audit_set import not_audited
from bot.feedback.roles import may_label
from bot.models import Feedback, Finding, FindingStatus, Project, Review, Severity


class LabelState(StrEnum):
    CONFIRMED = "confirmed"  # /severity of the bot's own severity
    CORRECTED = "corrected"  # /severity of another one
    ACCEPTED = "accepted"  # 👍 or addressed: the finding was valid; its severity is not judged
    DISMISSED = "dismissed"
    DISPUTED = "disputed"
    UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Label:
    state: LabelState
    severity: Severity | None  # the hard label for training: None unless confirmed or corrected


# What a vote may say besides a severity: not an issue; the finding is valid; wrong somehow.
DISMISS, VALID, DOUBT = "dismiss", "valid", "doubt"
Answer = Severity | str

# How strongly a kind of signal speaks: a command outranks a reaction, which outranks an addressing
# push (a line may change for reasons of its own, so a trusted 👎 still disputes the finding).
COMMAND, REACTION, ADDRESSED = 2, 1, 0


def vote(signal: Feedback) -> tuple[int, Answer] | None:
    """What one signal says about its finding, and how strongly; None for what says nothing (a reply,
    a thread resolved, a revoked reaction). The one place that gives each kind its meaning: only a
    command names a severity."""
    if signal.kind == SignalKind.SEVERITY:
        return COMMAND, Severity(signal.value)
    if signal.kind == SignalKind.DISMISS:
        return COMMAND, DISMISS
    if signal.kind == SignalKind.ADDRESSED:
        return ADDRESSED, VALID
    if signal.kind == SignalKind.REACTION and signal.value == UP:
        return REACTION, VALID
    if signal.kind == SignalKind.REACTION and signal.value == DOWN:
        return REACTION, DOUBT
    return None


def label_state(finding_severity: str, signals: Sequence[Feedback]) -> Label:
    """The label that ``signals`` — the trusted ones (``bot.feedback.roles.may_label``) — give a finding:

    1. Each reviewer speaks once per strength: their latest command, their latest reaction.
    2. The strongest votes decide: commands over reactions over an addressing push; among votes of
       one strength, the highest role (a maintainer's correction outranks a developer's; any trusted
       👎 outranks a push, which has no author).
    3. If those deciding votes agree: ``/dismiss`` → dismissed; a severity → corrected to it
       (confirmed when it is the bot's); 👍 or addressed → accepted, with no severity; 👎 → disputed.
       If they disagree (👍 and 👎, two severities, a severity and a dismissal) → disputed.
    4. No vote at all: unlabelled.
    """
    latest: dict[tuple[str, int], tuple[Feedback, Answer]] = {}
    for signal in sorted(signals, key=lambda s: (s.created_at, s.id or 0)):
        said = vote(signal)
        if said is not None:
            latest[(signal.author, said[0])] = (signal, said[1])
    if not latest:
        return Label(LabelState.UNLABELLED, None)
    weight = {key: (key[1], _rank(signal)) for key, (signal, _) in latest.items()}
    top = max(weight.values())
    answers = {answer for key, (_, answer) in latest.items() if weight[key] == top}
    if len(answers) > 1:
        return Label(LabelState.DISPUTED, None)
    answer = answers.pop()
    if answer == DISMISS:
        return Label(LabelState.DISMISSED, None)
    if answer == DOUBT:
        return Label(LabelState.DISPUTED, None)
    if answer == VALID:
        return Label(LabelState.ACCEPTED, None)
    corrected = Severity(answer)
    confirmed = corrected == Severity(finding_severity)
    return Label(LabelState.CONFIRMED if confirmed else LabelState.CORRECTED, corrected)


def _rank(signal: Feedback) -> int:
    return Role(signal.role).rank if signal.role else Role.NONE.rank  # an addressing push has no author


@dataclass(frozen=True)
class LabelledFinding:
    finding: Finding
    project: Project
    label: Label
    signals: list[Feedback]  # all of them, trusted or not
    trusted: list[Feedback]  # those that gave the label (``may_label``)


# Only a /severity command gives a finding a severity label: ``labelled_findings(engine,
# with_signal_of=HARD_LABEL_KINDS)`` reads just the findings ``severity_examples`` can keep.
HARD_LABEL_KINDS = frozenset({SignalKind.SEVERITY})
BATCH = 5_000  # findings read at once: memory stays bounded, and no query names more than two ids


Query = TypeVar("Query", bound=sa.Select[*tuple[Any, ...]])


def posted(query: Query, project_path: str | None = None, since: datetime | None = None) -> Query:
    """``query`` (of findings) joined to their reviews and projects, kept to the posted findings of
    one project, created since a date. A pending finding (recorded before its comment was posted) is
    not on the forge: it can have no feedback, and counting it would understate every rate."""
    query = (
        query.join(Review, col(Finding.review_id) == col(Review.id))
        .join(Project, col(Review.project_id) == col(Project.id))
        .where(col(Finding.status) == FindingStatus.POSTED)
    )
    if project_path is not None:
        query = query.where(col(Project.path) == project_path)
    if since is not None:
        query = query.where(col(Finding.created_at) >= since)
    return query


def labelled_findings(
    engine: sa.Engine,
    project_path: str | None = None,
    since: datetime | None = None,
    *,
    with_signal_of: Collection[str] | None = None,
    include_audited: bool = True,
) -> Iterator[LabelledFinding]:
    """Every posted finding (of one project, created since a date; with a signal of one of the kinds
    ``with_signal_of`` only, when given; not in the blind audit set unless ``include_audited``: what
    trains the model or reaches the teacher leaves those out) with its signals and the label its trusted
    signals give it, in id order. Read ``BATCH`` findings at a time, each batch's signals by a range of
    finding ids."""
    query = posted(select(Finding, col(Review.project_id), col(Review.mr_author)), project_path, since)
    if not include_audited:
        query = query.where(not_audited(col(Finding.fingerprint)))
    if with_signal_of is not None:
        query = query.where(
            sa.exists().where(
                col(Feedback.finding_id) == col(Finding.id), col(Feedback.kind).in_(list(with_signal_of))
            )
        )
    projects: dict[int, Project] = {}  # few, read once each: not once per finding
    after = 0
    while True:
        with Session(engine) as session:
            rows = session.exec(
                query.where(col(Finding.id) > after).order_by(col(Finding.id)).limit(BATCH)
            ).all()
            if not rows:
                return
            first, last = rows[0][0].id, rows[-1][0].id
            assert first is not None
            assert last is not None
            after = last
            signals: dict[int, list[Feedback]] = defaultdict(list)
            in_range = col(Feedback.finding_id).between(first, last)
            for signal in session.exec(select(Feedback).where(in_range).order_by(col(Feedback.id))).all():
                signals[signal.finding_id].append(signal)
            unknown = {project_id for _, project_id, _ in rows} - projects.keys()
            for project in session.exec(select(Project).where(col(Project.id).in_(unknown))).all():
                projects[project.id or 0] = project
        for finding, project_id, mr_author in rows:
            assert finding.id is not None
            project = projects[project_id]
            found = signals.get(finding.id, [])
            trusted = [s for s in found if may_label(s, project, mr_author)]
            yield LabelledFinding(finding, project, label_state(finding.severity, trusted), found, trusted)
        if len(rows) < BATCH:
            return


def severity_examples(findings: Iterable[LabelledFinding]) -> Iterator[dict[str, Any]]:
    """The flywheel's format for the severity task: hard labels only (findings confirmed or corrected
    by ``/severity``). ``meta.fingerprint`` is the finding's line-number-blind identity, which keeps
    a re-posted finding on the same side of the train/held-out split. ``meta.settings_digest`` and
    ``meta.instructions`` are the provenance: the review settings in force and the repository's
    instructions its prompts saw ("" for findings from before the repository file)."""
    for item in findings:
        if item.label.severity is None:
            continue
        yield {
            "question": {"code": item.finding.code, "review": item.finding.review},
            "answer": {"issue_type": item.label.severity.value},
            "meta": {
                "finding_id": item.finding.id,
                "fingerprint": item.finding.fingerprint,
                "project": item.project.path,
                "model_version": item.finding.model_version,
                "label_state": item.label.state.value,
                "settings_digest": item.finding.settings_digest,
                "instructions": item.finding.instructions,
                "signals": [
                    {"kind": s.kind, "value": s.value, "author": s.author, "role": s.role}
                    for s in item.trusted
                ],
            },
        }
