"""What keeps the bot's comments few: findings like ones reviewers dismissed are not posted
(suppression), and a review posts a bounded number of comments (the cap).

Suppression is the fast path of learning: the flywheel retrains the model every N labels, but a nit
that trusted reviewers dismissed (``/dismiss``) or 👎'd stops at the next merge request. Each new
finding is compared (``bot.review.similarity``) with the project's dismissed findings that still
suppress (``Finding.suppresses``; ``reviewbot feedback unsuppress`` turns one off); one at least
``threshold`` similar is recorded as suppressed, with the finding it was like, and listed in the
summary instead of posted.

The cap ranks a review's new findings by severity, then the model's confidence in it, and posts the
first ``max_comments``; the rest are listed in the summary. A finding at or above the merge gate is
always posted: it must be answerable (``/dismiss``, ``/severity``) to clear the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.events import DOWN, SignalKind
from bot.feedback.labels import LabelState, labelled_findings
from bot.models import Feedback, Finding, Project, Review, Severity
from bot.review.pipeline import ReviewFinding
from bot.review.similarity import Shape, most_similar, shape


@dataclass(frozen=True)
class Dismissed:
    """A finding of the project that trusted reviewers dismissed or 👎'd, and still suppresses."""

    finding_id: int
    mr_number: int
    by: str  # the reviewer whose signal decided it
    how: str  # "dismissed" or "👎"
    shape: Shape


@dataclass(frozen=True)
class Suppressed:
    finding: ReviewFinding
    like: Dismissed
    similarity: float


def _decider(signals: Sequence[Feedback], kind: str, value: str | None = None) -> str:
    """The author of the latest of ``signals`` of that kind (and value)."""
    matching = [s for s in signals if s.kind == kind and (value is None or s.value == value)]
    return max(matching, key=lambda s: (s.created_at, s.id or 0)).author if matching else ""


def dismissed_findings(engine: sa.Engine, project: Project) -> list[Dismissed]:
    """The project's findings whose trusted label is dismissed, or disputed by a trusted 👎, that
    still suppress; one per fingerprint (the newest)."""
    kept: dict[str, tuple[Finding, str, str]] = {}
    for item in labelled_findings(
        engine, project.path, with_signal_of=(SignalKind.DISMISS, SignalKind.REACTION)
    ):
        if item.project.id != project.id or not item.finding.suppresses:
            continue
        if item.label.state == LabelState.DISMISSED:
            decided = (item.finding, _decider(item.trusted, SignalKind.DISMISS), "dismissed")
        elif item.label.state == LabelState.DISPUTED and (
            by := _decider(item.trusted, SignalKind.REACTION, DOWN)
        ):
            decided = (item.finding, by, "👎")
        else:
            continue
        kept[item.finding.fingerprint] = decided
    if not kept:
        return []
    ids = [finding.id for finding, _, _ in kept.values()]
    with Session(engine) as session:
        numbers = dict(
            session.exec(
                select(Finding.id, Review.mr_number)
                .join(Review, col(Finding.review_id) == col(Review.id))
                .where(col(Finding.id).in_(ids))
            ).all()
        )
    return [
        Dismissed(f.id or 0, numbers[f.id], by, how, shape(f.path, f.title, f.review, f.anchor_text))
        for f, by, how in kept.values()
    ]


def suppress(
    findings: Sequence[ReviewFinding], dismissed: Sequence[Dismissed], threshold: float
) -> tuple[list[ReviewFinding], list[Suppressed]]:
    """``findings`` split into those to post and those too like a dismissed one."""
    others = [(item, item.shape) for item in dismissed]
    kept: list[ReviewFinding] = []
    suppressed: list[Suppressed] = []
    for finding in findings:
        seen = shape(finding.path, finding.title, finding.review, finding.anchor_text)
        match = most_similar(seen, others, threshold) if others else None
        if match is None:
            kept.append(finding)
        else:
            suppressed.append(Suppressed(finding, match[0], round(match[1], 3)))
    return kept, suppressed


def ranked(findings: Sequence[ReviewFinding]) -> list[ReviewFinding]:
    """Most severe first, then the most confident (unknown confidence last), then file order."""
    return sorted(
        findings, key=lambda f: (-f.severity.rank, -(f.confidence if f.confidence is not None else -1.0))
    )


def cap(
    findings: Sequence[ReviewFinding], most: int, gate: Severity | None
) -> tuple[list[ReviewFinding], list[ReviewFinding]]:
    """The findings to post (at most ``most``, plus any at or above ``gate``) and those to list in the
    summary instead, each in ``findings``' order."""
    posted: set[int] = set()
    for finding in ranked(findings):
        if len(posted) < most or (gate is not None and finding.severity.rank >= gate.rank):
            posted.add(id(finding))
    return [f for f in findings if id(f) in posted], [f for f in findings if id(f) not in posted]
