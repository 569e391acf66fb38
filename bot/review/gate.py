"""The merge gate: the ``reviewbot`` commit status on a merge request's head, from its latest review.

A project's ``block_on`` (a severity, or ``off``) names the least severe finding that fails the
status. The status is ``pending`` while the review runs, then ``failed`` while a posted finding at or
above the gate stands, ``success`` when none does, and ``error`` when the review itself failed. A
finding stops blocking when its trusted reviewers' label (``bot.feedback.labels``) dismisses it or
corrects its severity below the gate; their signals count on every row of the same finding
(fingerprint) on that merge request, so a dismissal made before a push still holds after it.
Teams then require the status in branch protection.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from sqlmodel import Session, col, select

from bot.feedback.labels import LabelState, label_state
from bot.feedback.roles import may_label
from bot.forges.base import MAX_STATUS_DESCRIPTION, CommitState, Forge, ForgeError
from bot.models import GATE_OFF, Feedback, Finding, FindingStatus, Project, Review, ReviewStatus, Severity

log = logging.getLogger(__name__)

GATE_CHOICES = (GATE_OFF, *(s.value for s in Severity))


def gate_severity(project: Project) -> Severity | None:
    """The least severity that fails the status; None when the project has no gate."""
    return None if project.block_on == GATE_OFF else Severity(project.block_on)


@dataclass(frozen=True)
class Verdict:
    state: CommitState
    description: str  # within the forge's limit

    def __post_init__(self) -> None:
        assert len(self.description) <= MAX_STATUS_DESCRIPTION


def latest_review(session: Session, project_id: int, mr_number: int) -> Review | None:
    """The merge request's newest review that is not superseded: the one its head's status is about."""
    return session.exec(
        select(Review)
        .where(col(Review.project_id) == project_id, col(Review.mr_number) == mr_number)
        .where(col(Review.status) != ReviewStatus.SUPERSEDED)
        .order_by(col(Review.id).desc())
    ).first()


def blocking(session: Session, project: Project, review: Review, gate: Severity) -> tuple[list[Finding], int]:
    """The review's posted findings at or above ``gate`` that still stand, and how many at or above it
    its trusted reviewers cleared (dismissed, or corrected below the gate)."""
    assert review.id is not None
    at_gate = [
        finding
        for finding in session.exec(
            select(Finding).where(
                col(Finding.review_id) == review.id, col(Finding.status) == FindingStatus.POSTED
            )
        ).all()
        if Severity(finding.severity).rank >= gate.rank
    ]
    if not at_gate:
        return [], 0
    signals: dict[str, list[Feedback]] = defaultdict(list)
    rows = session.exec(
        select(Finding.fingerprint, Feedback)
        .join(Feedback, col(Feedback.finding_id) == col(Finding.id))
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(col(Review.project_id) == review.project_id, col(Review.mr_number) == review.mr_number)
        .where(col(Finding.fingerprint).in_([f.fingerprint for f in at_gate]))
    ).all()
    for fingerprint, signal in rows:
        if may_label(signal, project, review.mr_author):
            signals[fingerprint].append(signal)
    standing = []
    for finding in at_gate:
        label = label_state(finding.severity, signals[finding.fingerprint])
        cleared = label.state == LabelState.DISMISSED or (
            label.severity is not None and label.severity.rank < gate.rank
        )
        if not cleared:
            standing.append(finding)
    return standing, len(at_gate) - len(standing)


def _counts(findings: list[Finding]) -> str:
    """ "1 critical, 2 major", most severe first."""
    by = {s: sum(f.severity == s for f in findings) for s in Severity}
    return ", ".join(f"{n} {s.value}" for s, n in by.items() if n)


def verdict(session: Session, project: Project, review: Review, gate: Severity) -> Verdict:
    """What the status of ``review``'s head says now."""
    if review.status in (ReviewStatus.QUEUED, ReviewStatus.RUNNING):
        return Verdict(CommitState.PENDING, f"reviewing {review.head_sha[:12]}")
    if review.status == ReviewStatus.FAILED:
        return Verdict(CommitState.ERROR, "the review failed; an admin sees why in reviewbot project reviews")
    standing, cleared = blocking(session, project, review, gate)
    above = f"{gate.value} or above" if gate != Severity.TRIVIAL else "any severity"
    if standing:
        text = f"{len(standing)} finding(s) at {above}: {_counts(standing)}; /dismiss or /severity to clear"
        return Verdict(CommitState.FAILED, text[:MAX_STATUS_DESCRIPTION])
    done = f"no finding at {above} stands" + (f" ({cleared} cleared by reviewers)" if cleared else "")
    return Verdict(CommitState.SUCCESS, done[:MAX_STATUS_DESCRIPTION])


def set_status(forge: Forge, sha: str, verdict: Verdict, url: str | None) -> bool:
    """Set the status; a refusal that retrying cannot fix (the token may not set statuses) is logged
    and costs the status only: False. A retryable error is raised, for the caller's retries."""
    try:
        forge.set_commit_status(sha, verdict.state, verdict.description, url)
    except ForgeError as exc:
        if exc.retryable:
            raise
        log.warning("the reviewbot status of %s was not set (%s): %s", sha[:12], verdict.state, exc)
        return False
    return True


def update(session: Session, forge: Forge, project: Project, mr_number: int) -> str:
    """Set the merge request's status from its latest review; what was done, in words."""
    gate = gate_severity(project)
    review = latest_review(session, project.id or 0, mr_number) if gate is not None else None
    if gate is None or review is None:
        return "no gate" if gate is None else "no review"
    said = verdict(session, project, review, gate)
    url = forge.comment_url(mr_number, review.summary_comment_id) if review.summary_comment_id else None
    done = set_status(forge, review.head_sha, said, url)
    return f"{said.state}: {said.description}" if done else "not set"
