"""The job queue (Huey): SQLite-backed and embedded by default, Redis-backed for several hosts.

The database is the record of every review; the queue only carries ids and signals. A review whose
job was lost (a worker killed mid-job, an enqueue that failed) is found by ``requeue_stale`` and
queued again; the job itself is idempotent, so a duplicate costs only time.

Each task is a method of ``Queue`` registered with Huey under a fixed name, so it can be read,
typed and called on its own.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import Task as HueyTask
from huey.exceptions import RetryTask, TaskLockedException
from huey.signals import SIGNAL_ERROR
from sqlmodel import Session, select

from bot import metrics
from bot.config import Settings
from bot.events import Signal
from bot.feedback.polling import ETags, poll_feedback
from bot.feedback.roles import RoleCache, resolve_roles
from bot.feedback.signals import apply_signal
from bot.forges import ForgeFactory, forge_for
from bot.forges.base import ForgeError
from bot.llm import LLMError, LLMRejected
from bot.models import Delivery, Finding, Project, Review, ReviewStatus
from bot.queue.codec import SignedJsonSerializer
from bot.review.job import mark_failed, run_review_job
from bot.secrets import secret_box

log = logging.getLogger(__name__)

REVIEW_RETRIES = 4
REVIEW_RETRY_DELAY_S = 20  # doubled at each retry: 20, 40, 80, 160 s
LOCKED_RETRY_DELAY_S = 15
FEEDBACK_RETRIES = 6  # a reaction can outrun the review job that records its finding: wait up to ~3 min
FEEDBACK_RETRY_DELAY_S = 30
STALE_QUEUED = timedelta(minutes=5)
STALE_RUNNING = timedelta(minutes=30)


def make_huey(queue_url: str, key: bytes, name: str = "reviewbot") -> Huey:
    """The queue ``name`` (the trainer has its own) on Redis or in a SQLite file; its jobs are JSON
    signed with ``key`` (``bot.queue.codec``), never pickles: a job someone else wrote is refused."""
    serializer = SignedJsonSerializer(key)
    if queue_url.startswith(("redis://", "rediss://")):
        return RedisHuey(name, url=queue_url, serializer=serializer)
    path = str(Path(queue_url.removeprefix("sqlite:///")).resolve())
    return SqliteHuey(name, filename=path, serializer=serializer)


class FindingNotYet(LookupError):
    """Feedback whose finding is not (yet) in the database."""


def _set_outcome(engine: sa.Engine, delivery_id: int, outcome: str) -> None:
    with Session(engine) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None:
            delivery.outcome = outcome[:256]
            session.add(delivery)
            session.commit()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ForgeError):
        return exc.retryable
    return isinstance(exc, LLMError) and not isinstance(exc, LLMRejected)


def _retries_left(task: HueyTask | None) -> int:
    return task.retries if task is not None else 0


class Queue:
    """The Huey instance with reviewbot's tasks registered on it; ``enqueue_*`` is the intake's side."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        forges: ForgeFactory | None = None,  # default: forge_for, with the configured token prefix
        retry_delay_s: int = REVIEW_RETRY_DELAY_S,
    ) -> None:
        self.settings, self.engine = settings, engine
        self.forges = forges or partial(forge_for, token_env_prefix=settings.token_env_prefix)
        self.huey = make_huey(settings.queue_url, secret_box(settings).queue_key())
        self.etags: ETags = {}  # this process's conditional polls
        self.roles = RoleCache()  # reviewers' roles, read from the forges a few minutes ago at most
        # Forge and model calls: retried with backoff; the task sees its retries left (``task``).
        with_retries: dict[str, Any] = {
            "retries": REVIEW_RETRIES, "retry_delay": retry_delay_s, "retry_backoff": 2, "context": True
        }  # fmt: skip
        feedback_delay = FEEDBACK_RETRY_DELAY_S if retry_delay_s else 0
        huey = self.huey
        self._review = huey.task(name="review", **with_retries)(self.review)
        self._feedback = huey.task(name="feedback", retries=FEEDBACK_RETRIES, retry_delay=feedback_delay)(
            self.feedback
        )
        self._acknowledge = huey.task(name="acknowledge", **with_retries)(self.acknowledge)
        self._roles = huey.task(name="roles", **with_retries)(self.resolve_roles)
        huey.signal(SIGNAL_ERROR)(self.on_error)
        huey.periodic_task(crontab(minute="*/5"), name="poll_feedback")(self.poll_feedback)
        huey.periodic_task(crontab(minute="*"), name="requeue_stale")(self.requeue_stale)

    # --- what the intake calls

    def enqueue_review(self, review_id: int) -> None:
        self._review(review_id)

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None:
        self._feedback(project_id, delivery_id, signal)

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None:
        self._acknowledge(finding_id, signal)

    def enqueue_roles(self, project_id: int) -> None:
        self._roles(project_id)

    # --- the tasks

    def review(self, review_id: int, task: HueyTask | None = None) -> str:
        """Run one review, at most one per merge request at a time across all workers and hosts."""
        with Session(self.engine) as session:
            row = session.get(Review, review_id)
        if row is None:
            log.warning("review %s does not exist; dropping its job", review_id)
            return "missing"
        try:
            with self.huey.lock_task(f"review-{row.project_id}-{row.mr_number}"):
                status = run_review_job(review_id, self.settings, self.engine, self.forges)
            metrics.REVIEWS.labels(status).inc()
            return status
        except TaskLockedException:
            raise RetryTask(delay=LOCKED_RETRY_DELAY_S) from None
        except (ForgeError, LLMError) as exc:
            if _retryable(exc) and _retries_left(task) > 0:
                log.warning("review %s failed, will retry (%s left): %s", review_id, _retries_left(task), exc)
                raise
            mark_failed(self.engine, review_id, str(exc))
            metrics.REVIEWS.labels(ReviewStatus.FAILED.value).inc()
            return ReviewStatus.FAILED
        except Exception as exc:  # a bug: record it on the review, then let Huey log the traceback
            mark_failed(self.engine, review_id, f"internal error: {exc!r}")
            metrics.REVIEWS.labels(ReviewStatus.FAILED.value).inc()
            raise

    def feedback(self, project_id: int, delivery_id: int, signal: Signal) -> str:
        """Record a signal whose finding was not known when it arrived; retried until it is."""
        with Session(self.engine) as session:
            applied = apply_signal(session, project_id, signal)
            if applied is None:
                raise FindingNotYet(f"no finding for {signal.describe()} yet")
            finding, changed = applied
            finding_id = finding.id
            session.commit()
        _set_outcome(self.engine, delivery_id, f"recorded {signal.kind}")
        self.enqueue_roles(project_id)
        if changed and signal.is_command and finding_id is not None:
            self.enqueue_acknowledgement(finding_id, signal)
        return "recorded"

    def acknowledge(self, finding_id: int, signal: Signal, task: HueyTask | None = None) -> str:
        """Tell the reviewer their command was heard (👀 and a reply in the finding's thread)."""
        with Session(self.engine) as session:
            finding = session.get(Finding, finding_id)
            review = session.get(Review, finding.review_id) if finding else None
            project = session.get(Project, review.project_id) if review else None
        if finding is None or review is None or project is None or signal.reply_id is None:
            return "nothing to acknowledge"
        thread = (
            finding.forge_thread_id or finding.forge_comment_id
        )  # GitLab: discussion; GitHub: 1st comment
        try:
            self.forges(project).acknowledge(
                review.mr_number, signal.reply_id, thread, signal.acknowledgement()
            )
        except ForgeError as exc:
            if exc.retryable and _retries_left(task) > 0:
                raise
            log.warning("could not acknowledge %s: %s", signal.describe(), exc)  # the signal itself is kept
            return "failed"
        return "acknowledged"

    def resolve_roles(self, project_id: int, task: HueyTask | None = None) -> str:
        """Read from the forge the roles of the project's signals recorded without one (the intake
        never waits on a forge); until then they label nothing."""
        with Session(self.engine) as session:
            project = session.get(Project, project_id)
            if project is None:
                return "no such project"
            try:
                resolved = resolve_roles(session, project_id, self.forges(project).member_role, self.roles)
            except ForgeError as exc:
                if exc.retryable and _retries_left(task) > 0:
                    raise
                log.warning("could not read reviewers' roles on %s: %s", project.path, exc)
                return "failed"  # the next poll of the project tries again
            session.commit()
        return f"{resolved} roles"

    def on_error(self, signal_name: str, task: HueyTask, exc: Exception | None = None) -> None:
        """Huey's error signal. On the last try of a feedback job, no finding of the bot's has that
        comment or discussion — a reply to someone else's comment, most likely: said on the delivery,
        not silently lost."""
        del signal_name  # Huey passes it; this handler listens to one signal only
        if task.name == "feedback" and not task.retries and isinstance(exc, FindingNotYet):
            _, delivery_id, reviewer_signal = task.args
            log.info("feedback dropped: %s", exc)
            why = f"feedback matched no finding of the bot: {reviewer_signal.describe()}"
            _set_outcome(self.engine, delivery_id, why)

    def poll_feedback(self, now: datetime | None = None) -> int:
        """Every five minutes: the signals forges send no webhook for (``bot.feedback.polling``)."""
        return poll_feedback(self.engine, self.forges, self.etags, self.roles, now)

    def requeue_stale(self, now: datetime | None = None) -> int:
        """Every minute: queue again the reviews queued or running for too long (their job was lost)."""
        now = now or datetime.now(UTC)
        with Session(self.engine) as session:
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
