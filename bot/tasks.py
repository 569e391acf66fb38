"""The job queue (Huey): SQLite-backed and embedded by default, Redis-backed for several hosts.

The database is the record of every review; the queue only carries review ids. A review whose job
was lost (a worker killed mid-job, an enqueue that failed) is found by ``requeue_stale`` and queued
again; the job itself is idempotent, so a duplicate costs only time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.exceptions import RetryTask, TaskLockedException
from huey.signals import SIGNAL_ERROR
from sqlmodel import Session, col, select

from bot import metrics
from bot.config import Settings
from bot.feedback import Signal, apply_signal, record_reaction_counts, record_thread_states
from bot.forges import forge_for
from bot.forges.base import ForgeError
from bot.llm import LLMError, LLMRejected
from bot.models import Delivery, Finding, Project, Review, ReviewStatus
from bot.models import Forge as ForgeKind
from bot.review_job import ForgeFactory, mark_failed, run_review_job

log = logging.getLogger(__name__)

REVIEW_RETRIES = 4
REVIEW_RETRY_DELAY_S = 20  # doubled at each retry: 20, 40, 80, 160 s
LOCKED_RETRY_DELAY_S = 15
FEEDBACK_RETRIES = 6  # a reaction can outrun the review job that records its finding: wait up to ~3 min
FEEDBACK_RETRY_DELAY_S = 30
STALE_QUEUED = timedelta(minutes=5)
# GitHub's reactions and GitLab's thread resolutions are polled (no webhook), which costs requests:
# an open merge request is polled until this long after its last review (an abandoned one stops),
POLL_DAYS_OPEN = 30
# and a merged or closed one for this long after (reviewers still react to what they read then).
POLL_DAYS_AFTER_CLOSE = 3
STALE_RUNNING = timedelta(minutes=30)


def make_huey(queue_url: str, name: str = "reviewbot") -> Huey:
    """The queue ``name`` (the trainer has its own) on Redis or in a SQLite file."""
    if queue_url.startswith(("redis://", "rediss://")):
        return RedisHuey(name, url=queue_url)
    return SqliteHuey(name, filename=str(Path(queue_url.removeprefix("sqlite:///")).resolve()))


class FindingNotYet(LookupError):
    """Feedback whose finding is not (yet) in the database."""


def _outcome(session: Session, delivery_id: int, outcome: str) -> None:
    delivery = session.get(Delivery, delivery_id)
    if delivery is not None:
        delivery.outcome = outcome[:256]
        session.add(delivery)
        session.commit()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ForgeError):
        return exc.retryable
    return isinstance(exc, LLMError) and not isinstance(exc, LLMRejected)


class Queue:
    """The Huey instance with reviewbot's tasks registered on it."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        forges: ForgeFactory = forge_for,
        retry_delay_s: int = REVIEW_RETRY_DELAY_S,
    ) -> None:
        self.huey = make_huey(settings.queue_url)
        huey = self.huey
        # Forge and model calls: retried with backoff; the task sees its retries left (``task``).
        with_retries: dict[str, Any] = {
            "retries": REVIEW_RETRIES, "retry_delay": retry_delay_s, "retry_backoff": 2, "context": True
        }  # fmt: skip

        @huey.task(name="review", **with_retries)
        def review(review_id: int, task: Any = None) -> str:
            with Session(engine) as session:
                row = session.get(Review, review_id)
            if row is None:
                log.warning("review %s does not exist; dropping its job", review_id)
                return "missing"
            try:
                # At most one review of a merge request at a time, across all workers and hosts.
                with huey.lock_task(f"review-{row.project_id}-{row.mr_number}"):
                    status = run_review_job(review_id, settings, engine, forges)
                metrics.REVIEWS.labels(status).inc()
                return status
            except TaskLockedException:
                raise RetryTask(delay=LOCKED_RETRY_DELAY_S) from None
            except (ForgeError, LLMError) as exc:
                if _retryable(exc) and task is not None and task.retries > 0:
                    log.warning("review %s failed, will retry (%s left): %s", review_id, task.retries, exc)
                    raise
                mark_failed(engine, review_id, str(exc))
                metrics.REVIEWS.labels(ReviewStatus.FAILED.value).inc()
                return ReviewStatus.FAILED
            except Exception as exc:  # a bug: record it on the review, then let Huey log the traceback
                mark_failed(engine, review_id, f"internal error: {exc!r}")
                metrics.REVIEWS.labels(ReviewStatus.FAILED.value).inc()
                raise

        @huey.task(
            retries=FEEDBACK_RETRIES,
            retry_delay=FEEDBACK_RETRY_DELAY_S if retry_delay_s else 0,
            name="feedback",
        )
        def feedback(project_id: int, delivery_id: int, signal: Signal) -> str:
            with Session(engine) as session:
                applied = apply_signal(session, project_id, signal)
                if applied is not None:
                    finding, changed = applied
                    session.commit()
                    _outcome(session, delivery_id, f"recorded {signal.kind}")
                    if changed and signal.is_command and finding.id is not None:
                        self.enqueue_acknowledgement(finding.id, signal)
                    return "recorded"
            raise FindingNotYet(f"no finding for {signal.describe()} yet")

        @huey.task(name="acknowledge", **with_retries)
        def acknowledge(finding_id: int, signal: Signal, task: Any = None) -> str:
            with Session(engine) as session:
                finding = session.get(Finding, finding_id)
                review = session.get(Review, finding.review_id) if finding else None
                project = session.get(Project, review.project_id) if review else None
            if finding is None or review is None or project is None or signal.reply_id is None:
                return "nothing to acknowledge"
            thread = (
                finding.forge_thread_id or finding.forge_comment_id
            )  # GitLab: discussion; GitHub: first comment
            try:
                forges(project).acknowledge(
                    review.mr_number, signal.reply_id, thread, signal.acknowledgement()
                )
            except ForgeError as exc:
                if exc.retryable and task is not None and task.retries > 0:
                    raise
                log.warning(
                    "could not acknowledge %s: %s", signal.describe(), exc
                )  # the signal itself is kept
                return "failed"
            return "acknowledged"

        @huey.signal(SIGNAL_ERROR)
        def unmatched(signal_name: str, task: Any, exc: Exception | None = None) -> None:
            # The last try of a feedback job: no finding of the bot's has that comment or discussion —
            # a reply to someone else's comment, most likely. Said on the delivery, not silently lost.
            if task.name == "feedback" and not task.retries and isinstance(exc, FindingNotYet):
                _, delivery_id, signal = task.args
                log.info("feedback dropped: %s", exc)
                with Session(engine) as session:
                    _outcome(
                        session, delivery_id, f"feedback matched no finding of the bot: {signal.describe()}"
                    )

        @huey.periodic_task(crontab(minute="*/5"), name="poll_feedback")
        def poll_feedback() -> int:
            return self.poll_feedback(engine)

        @huey.periodic_task(crontab(minute="*"), name="requeue_stale")
        def requeue_stale() -> int:
            return self.requeue_stale(engine)

        self._review = review
        self._forges = forges
        self._etags: dict[tuple[int, int], str] = {}  # per pull request, for conditional polls
        self._feedback = feedback
        self._acknowledge = acknowledge

    def enqueue_review(self, review_id: int) -> None:
        self._review(review_id)

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None:
        self._feedback(project_id, delivery_id, signal)

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None:
        self._acknowledge(finding_id, signal)

    def poll_feedback(self, engine: sa.Engine, now: datetime | None = None) -> int:
        """Poll what forges send no webhook for — GitHub's reactions, GitLab's thread resolution — on
        the merge requests with a done review that are open and were reviewed in the last
        ``POLL_DAYS_OPEN`` days, or were merged or closed in the last ``POLL_DAYS_AFTER_CLOSE`` days;
        returns the rows that changed."""
        now = now or datetime.now(UTC)
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
        polled = {(project_id, number) for project_id, number in pairs}
        self._etags = {key: etag for key, etag in self._etags.items() if key in polled}  # drop the finished
        changed = 0
        for project_id, number in pairs:
            project = projects[project_id]
            try:
                forge = self._forges(project)
                if project.forge == ForgeKind.GITHUB:
                    counts, etag = forge.reaction_counts(number, self._etags.get((project_id, number)))
                    if etag:
                        self._etags[(project_id, number)] = etag
                    if counts is None:
                        continue  # nothing changed since the last poll
                else:
                    threads = {c.thread_id: c.resolved for c in forge.bot_comments(number) if c.thread_id}
            except ForgeError as exc:  # the next poll tries again
                log.warning("could not poll feedback of %s #%s: %s", project.path, number, exc)
                continue
            with Session(engine) as session:
                if project.forge == ForgeKind.GITHUB:
                    changed += record_reaction_counts(session, project_id, counts or {})
                else:
                    changed += record_thread_states(session, project_id, threads)
                session.commit()
        return changed

    def requeue_stale(self, engine: sa.Engine, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        with Session(engine) as session:
            stale = session.exec(
                select(Review.id).where(
                    sa.or_(
                        sa.and_(
                            sa.column("status") == ReviewStatus.QUEUED,
                            sa.column("created_at") < now - STALE_QUEUED,
                        ),
                        sa.and_(
                            sa.column("status") == ReviewStatus.RUNNING,
                            sa.column("started_at") < now - STALE_RUNNING,
                        ),
                    )
                )
            ).all()
        for review_id in stale:
            assert review_id is not None
            log.warning("review %s looks lost (queued or running too long); queueing it again", review_id)
            self.enqueue_review(review_id)
        return len(stale)
