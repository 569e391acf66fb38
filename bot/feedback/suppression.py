"""Suppressions, for the admin to audit and undo: the findings a review did not post because they
were like ones trusted reviewers dismissed (``bot.review.noise``), and ``unsuppress``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from bot.models import Finding, FindingStatus, Project, Review
from bot.outbox import Job, stage


def suppressed_findings(
    engine: sa.Engine, project_path: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest suppressed findings (of one project), each with the dismissed finding it was like."""
    like = aliased(Finding)
    like_review = aliased(Review)
    query = (
        select(Finding, Review.mr_number, Project.path, like_review.mr_number)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .join(Project, col(Review.project_id) == col(Project.id))
        .join(like, col(Finding.like_finding_id) == col(like.id))
        .join(like_review, col(like.review_id) == col(like_review.id))
        .where(col(Finding.status) == FindingStatus.SUPPRESSED)
        .order_by(col(Finding.id).desc())
        .limit(limit)
    )
    if project_path is not None:
        query = query.where(col(Project.path) == project_path)
    with Session(engine) as session:
        rows = session.exec(query).all()
    return [
        {
            "finding_id": finding.id, "project": path, "mr": mr, "path": finding.path, "line": finding.line,
            "severity": finding.severity, "title": finding.title, "model_version": finding.model_version,
            "like_finding_id": finding.like_finding_id, "like_mr": like_mr, "similarity": finding.similarity,
            "created_at": finding.created_at.isoformat(),
        }
        for finding, mr, path, like_mr in rows
    ]  # fmt: skip


def unsuppress(engine: sa.Engine, finding_id: int) -> str:
    """Undo one suppression: the dismissed finding it was like stops suppressing (at later reviews),
    and the finding is queued for posting (the ``post`` job posts it while its merge request is at
    the reviewed head). What was done, in words; LookupError for a finding that is not suppressed."""
    with Session(engine) as session:
        finding = session.get(Finding, finding_id)
        if finding is None or finding.status != FindingStatus.SUPPRESSED:
            state = "does not exist" if finding is None else f"is {finding.status}, not suppressed"
            raise LookupError(f"finding {finding_id} {state}")
        like = session.get(Finding, finding.like_finding_id) if finding.like_finding_id else None
        if like is not None:
            like.suppresses = False
            session.add(like)
        like_id = like.id if like is not None else None
        finding.status = FindingStatus.PENDING
        session.add(finding)
        stage(session, Job.POST, finding.review_id)
        session.commit()
    source = f"finding {like_id} no longer suppresses others; " if like_id is not None else ""
    return f"{source}finding {finding_id} queued for posting (the running service posts it within a minute)"
