"""Polling what forges send no webhook for — GitHub's reactions, GitLab's thread resolution — on the
merge requests where reviewers may still react to the bot's comments; the poll also fills in the
roles of the signals' authors (``bot.feedback.roles``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.feedback.roles import RoleCache, resolve_roles
from bot.feedback.signals import record_reactions, record_thread_states
from bot.forges import ForgeFactory
from bot.forges.base import Forge, ForgeError
from bot.models import Project, Review, ReviewStatus

log = logging.getLogger(__name__)

# Polling costs requests: an open merge request is polled until this long after its last review
# (an abandoned one stops),
POLL_DAYS_OPEN = 30
# and a merged or closed one for this long after (reviewers still react to what they read then).
POLL_DAYS_AFTER_CLOSE = 3

ETags = dict[tuple[int, int], str]
"""Per (project id, merge request number): the ETag of its last poll, for conditional requests."""


def polled_merge_requests(engine: sa.Engine, now: datetime) -> list[tuple[Project, int]]:
    """The merge requests with a done review that are open and were reviewed in the last
    ``POLL_DAYS_OPEN`` days, or were merged or closed in the last ``POLL_DAYS_AFTER_CLOSE`` days."""
    last_review = sa.func.max(col(Review.finished_at))
    closed_at = sa.func.max(col(Review.mr_closed_at))  # set on all its reviews, or on none
    with Session(engine) as session:
        pairs = session.exec(
            select(col(Review.project_id), col(Review.mr_number))
            .join(Project, col(Review.project_id) == col(Project.id))
            .where(col(Review.status) == ReviewStatus.DONE, col(Project.enabled))
            .group_by(col(Review.project_id), col(Review.mr_number))
            .having(
                sa.or_(
                    sa.and_(closed_at.is_(None), last_review >= now - timedelta(days=POLL_DAYS_OPEN)),
                    closed_at >= now - timedelta(days=POLL_DAYS_AFTER_CLOSE),
                )
            )
        ).all()
        projects = {p.id: p for p in session.exec(select(Project)).all()}
    return [(projects[project_id], number) for project_id, number in pairs]


def poll_feedback(
    engine: sa.Engine, forges: ForgeFactory, etags: ETags, roles: RoleCache, now: datetime | None = None
) -> int:
    """Poll every merge request due (see ``polled_merge_requests``), store what changed and the roles
    of new signals' authors; returns the rows that changed. ``etags`` is updated in place and forgets
    the merge requests no longer polled."""
    due = polled_merge_requests(engine, now or datetime.now(UTC))
    keys = {(project.id, number) for project, number in due}
    for key in set(etags) - keys:
        del etags[key]
    changed = 0
    for project, number in due:
        try:
            changed += _poll_one(engine, forges, etags, roles, project, number)
        except Exception:  # of any kind (a forge's odd answer, a bug, the database): the others go on
            log.exception(
                "could not poll feedback of %s #%s; the next poll tries again", project.path, number
            )
    return changed


def _poll_one(
    engine: sa.Engine, forges: ForgeFactory, etags: ETags, roles: RoleCache, project: Project, number: int
) -> int:
    assert project.id is not None
    key = (project.id, number)
    try:
        forge = forges(project)
        polled, etag = forge.poll_feedback(number, etags.get(key))
    except ForgeError as exc:  # expected now and then (rate limits, outages): a warning, not a trace
        log.warning("could not poll feedback of %s #%s: %s", project.path, number, exc)
        return 0
    changed = 0
    if polled is not None:  # None: nothing changed since the last poll
        with Session(engine) as session:
            changed += record_reactions(session, project.id, polled.reactions)
            changed += record_thread_states(session, project.id, polled.resolved)
            session.commit()
    if etag:  # only once what it stands for is stored: a failure above polls it all again
        etags[key] = etag
    _resolve_roles(engine, project.id, forge, roles)
    return changed


def _resolve_roles(engine: sa.Engine, project_id: int, forge: Forge, roles: RoleCache) -> None:
    """The roles of the authors just polled, and of any signal still waiting for one (its job lost,
    or recorded before roles were); a forge failure leaves them to the next poll."""
    with Session(engine) as session:
        try:
            resolve_roles(session, project_id, forge.member_role, roles)
        except ForgeError as exc:
            log.warning("could not read reviewers' roles on project %s: %s", project_id, exc)
            return
        session.commit()
