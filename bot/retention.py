"""What is kept and for how long: ``prune`` removes what no feature needs any more.

Removed, when older than the retention:

- **deliveries**: a delivery row only answers the forge's redeliveries of it as duplicates, and
  forges redeliver within hours (GitLab) or on a person's request in the last few days (GitHub);
- **sent outbox rows**: their job reached the queue; an unsent one is never removed;
- **superseded findings**: each re-review records its findings again, so one comment gets a row per
  review; an older row is removed when a newer posted row of the same merge request has the same
  fingerprint (and the same comment, when the older one had one), so signals, ``/resolve`` and the
  addressed check still find the comment's newest row. A finding with feedback is never removed:
  feedback is the training data, and its labels and acceptance figures are read from it;
- **findings rated below the threshold** (never posted, kept for the blind audit set), once older
  than the retention; one drawn into the audit set is never removed, whatever its status;
- **failed and superseded reviews without findings**, unless a review is the newest of its merge
  request (the reconciliation poll would queue its head again) or an unsent job names it.

Kept whatever their age: done reviews (their file digests tell the next review what is unchanged,
their findings are what feedback is about), feedback, projects, model versions, flywheel runs,
training examples and golden sets. The queue's own results live in the queue's storage, not here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from bot.models import AuditItem, Delivery, Feedback, Finding, FindingStatus, Outbox, Review, ReviewStatus
from bot.outbox import Job, job_of

KINDS = ("deliveries", "outbox", "findings", "reviews")


def prune(engine: sa.Engine, older_than: timedelta) -> dict[str, int]:
    """Remove rows older than ``older_than`` that no feature needs; rows removed, per kind. One
    transaction: a failure removes nothing."""
    cutoff = datetime.now(UTC) - older_than
    with Session(engine) as session:
        removed = {
            "deliveries": _delete(session, sa.delete(Delivery).where(col(Delivery.received_at) < cutoff)),
            "outbox": _delete(
                session,
                sa.delete(Outbox).where(col(Outbox.sent_at).is_not(None), col(Outbox.sent_at) < cutoff),
            ),
            "findings": _delete(session, _superseded_findings(cutoff)),
            "reviews": _delete(session, _empty_reviews(session, cutoff)),
        }
        session.commit()
    return removed


def _delete(session: Session, statement: sa.Delete) -> int:
    return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def _superseded_findings(cutoff: datetime) -> sa.Delete:
    old_review, newer, newer_review = aliased(Review), aliased(Finding), aliased(Review)
    same_comment = sa.or_(
        col(Finding.forge_comment_id).is_(None), col(newer.forge_comment_id) == col(Finding.forge_comment_id)
    )
    replaced = sa.exists().where(
        col(old_review.id) == col(Finding.review_id),
        col(newer_review.project_id) == col(old_review.project_id),
        col(newer_review.mr_number) == col(old_review.mr_number),
        col(newer.review_id) == col(newer_review.id),
        col(newer.id) > col(Finding.id),
        col(newer.fingerprint) == col(Finding.fingerprint),
        col(newer.status) == FindingStatus.POSTED,
        same_comment,
    )
    has_feedback = sa.exists().where(col(Feedback.finding_id) == col(Finding.id))
    audited = sa.exists().where(col(AuditItem.finding_id) == col(Finding.id))
    below = col(Finding.status) == FindingStatus.BELOW
    return sa.delete(Finding).where(
        col(Finding.created_at) < cutoff, sa.or_(replaced, below), ~has_feedback, ~audited
    )


def _empty_reviews(session: Session, cutoff: datetime) -> sa.Delete:
    newer = aliased(Review)
    unsent = session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all()
    named = {  # the reviews that jobs still to be sent will look for
        args[0] for job, args in map(job_of, unsent) if job is Job.REVIEW and isinstance(args[0], int)
    }
    return sa.delete(Review).where(
        col(Review.status).in_([ReviewStatus.FAILED, ReviewStatus.SUPERSEDED]),
        col(Review.created_at) < cutoff,
        ~sa.exists().where(col(Finding.review_id) == col(Review.id)),
        sa.exists().where(
            col(newer.project_id) == col(Review.project_id),
            col(newer.mr_number) == col(Review.mr_number),
            col(newer.id) > col(Review.id),
        ),
        col(Review.id).not_in(named),
    )
