"""The reconciliation poll: webhooks make reviews fast, this makes them certain.

Every few minutes (and at start-up) each enabled project's open merge requests updated since its last
poll are listed, and a head that has no review yet — its webhook lost, or answered 500 while the
database was down — gets one, queued through the outbox in the same transaction. The rules are the
intake's for a push: a draft is not reviewed, nor a merge request of the bot's own.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import outbox
from bot.forges import ForgeFactory
from bot.forges.base import MergeRequest
from bot.models import Project, Review

log = logging.getLogger(__name__)

# A merge request updated this recently is left to its webhook, most likely still in flight (a review
# queued by both would run twice); the next poll, which looks back OVERLAP, takes it if it was lost.
GRACE = timedelta(minutes=1)
# Each poll looks back this far past the last one: the forge's clock, second-rounded timestamps,
# and the merge requests left to their webhook by GRACE.
OVERLAP = timedelta(minutes=3)


def reconcile(engine: sa.Engine, forges: ForgeFactory, now: datetime | None = None) -> int:
    """Queue a review (through the outbox) for every open head that has none; how many. A project
    whose forge or database fails is logged and skipped: its next poll covers what this one missed."""
    now = now or datetime.now(UTC)
    with Session(engine) as session:
        projects = session.exec(select(Project).where(col(Project.enabled)).order_by(col(Project.id))).all()
    queued = 0
    for project in projects:
        try:
            queued += _reconcile_project(engine, forges, project, now)
        except Exception:  # any failure of one project: the others are still polled
            log.exception("reconciliation of %s project %s failed", project.forge, project.path)
    return queued


def _reconcile_project(engine: sa.Engine, forges: ForgeFactory, project: Project, now: datetime) -> int:
    assert project.id is not None
    # A first poll goes back to the project's registration: no webhook was due for an older update.
    last = project.reconciled_at or project.created_at
    since = (last if last.tzinfo else last.replace(tzinfo=UTC)) - OVERLAP  # SQLite gives naive UTC back
    forge = forges(project)
    own = {forge.bot_username, project.bot_username}
    due = [mr for mr in forge.open_merge_requests(since) if _reviewable(mr, own, now)]
    with Session(engine) as session:
        reviewed = set(
            session.exec(
                select(col(Review.mr_number), col(Review.head_sha)).where(
                    col(Review.project_id) == project.id,
                    col(Review.mr_number).in_([mr.number for mr in due]),
                )
            ).all()
        )
        queued = 0
        for mr in due:
            if (mr.number, mr.head_sha) in reviewed:
                continue
            review = Review(project_id=project.id, mr_number=mr.number, head_sha=mr.head_sha)
            session.add(review)
            session.flush()
            assert review.id is not None
            outbox.stage(session, outbox.Job.REVIEW, review.id)
            log.info("%s !%s: head %s had no review (webhook lost?); review %s queued",
                     project.path, mr.number, mr.head_sha[:12], review.id)  # fmt: skip
            queued += 1
        session.execute(sa.update(Project).where(col(Project.id) == project.id).values(reconciled_at=now))
        session.commit()
    return queued


def _reviewable(mr: MergeRequest, own: set[str | None], now: datetime) -> bool:
    """What a push's webhook would queue: not a draft, not the bot's own; and not so recent that
    its webhook is likely still on its way."""
    recent = mr.updated_at is not None and mr.updated_at > now - GRACE
    return not mr.draft and mr.author not in own and not recent
