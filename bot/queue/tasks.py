"""The job queue (Huey): SQLite-backed and embedded by default, Redis-backed for several hosts.

The database is the record of every review; the queue only carries ids and signals, and stores no
results (nothing reads them). Jobs reach it through the outbox (``bot.outbox``, ``bot.queue.relay``):
written in the transaction that caused them, sent after the commit, re-sent if the queue was down.

A review runs under its merge request's lease (``bot.queue.lease``), renewed by a heartbeat and
mirrored on ``Review.lease_until``; a worker that died stops renewing it, and the stale sweep queues
the review again once the lease is past. Each run counts in ``Review.attempts``; a review past
``review_max_attempts`` is marked failed with its last error. Only retryable errors (the forge's
5xx, 429 or network; the model server unavailable or answering badly) are retried, after the
server's ``Retry-After`` when it gave one; any other error (a bug) fails the review at once, with
the error. A stopping worker hands the jobs it could not finish in time back (``on_interrupted``);
a review whose merge request's lease is held waits, spending no attempt.

Each task is a method of ``Queue`` registered with Huey under a fixed name, so it can be read,
typed and called on its own; the periodic jobs run once per period across all workers
(``bot.queue.schedule``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from huey import Huey, RedisHuey, SqliteHuey
from huey.api import Task as HueyTask
from huey.exceptions import CancelExecution
from huey.signals import SIGNAL_ERROR, SIGNAL_INTERRUPTED
from huey.storage import RedisPriorityQueue, RedisStorage, SqliteStorage
from sqlmodel import Session, col, select

from bot import metrics
from bot.config import Settings
from bot.events import Signal
from bot.feedback import canary
from bot.feedback.polling import ETags, poll_feedback
from bot.feedback.roles import RoleCache, resolve_roles
from bot.feedback.signals import apply_signal, stage_follow_ups
from bot.forges import ForgeFactory, forge_for
from bot.forges.base import ForgeError
from bot.llm import LLMError, LLMRejected
from bot.models import Delivery, Finding, Project, Review, ReviewStatus
from bot.outbox import Job, stage
from bot.queue import lease
from bot.queue.codec import SignedJsonSerializer
from bot.queue.relay import Relay
from bot.queue.schedule import Periodic, Scheduler
from bot.retention import prune
from bot.review.gate import gate_severity
from bot.review.gate import update as update_gate
from bot.review.job import mark_failed, post_unsuppressed, run_review_job
from bot.review.reconcile import reconcile
from bot.secrets import secret_box
from bot.sources import AppKeys

log = logging.getLogger(__name__)

TASK_RETRIES = 4  # acknowledgements and roles: forge calls, retried with backoff
REVIEW_RETRY_DELAY_S = 20  # a review's retry waits this, doubled at each attempt, unless the forge says
LOCKED_RETRY_DELAY_S = 15  # a review whose merge request is being reviewed waits this, spending no attempt
FEEDBACK_RETRIES = 6  # a reaction can outrun the review job that records its finding: wait up to ~3 min
FEEDBACK_RETRY_DELAY_S = 30
STALE_QUEUED = timedelta(minutes=5)  # a queued review not picked up within this is queued again
STALE_RUNNING = timedelta(minutes=30)  # a running review of before leases, never renewed
FINAL = (ReviewStatus.DONE, ReviewStatus.SUPERSEDED, ReviewStatus.FAILED)
PERIODS_S = {
    "poll_feedback": 300.0, "requeue_stale": 60.0, "resend_outbox": 30.0, "prune": 86400.0, "canary": 3600.0,
}  # fmt: skip


def make_huey(queue_url: str, key: bytes, name: str = "reviewbot") -> Huey:
    """The queue ``name`` (the trainer has its own) on Redis or in a SQLite file; its jobs are JSON
    signed with ``key`` (``bot.queue.codec``), never pickles: a job someone else wrote is refused.
    No results are stored: nothing reads them, and they would grow forever."""
    serializer = SignedJsonSerializer(key)
    if queue_url.startswith(("redis://", "rediss://")):
        return RedisHuey(name, url=queue_url, serializer=serializer, results=False)
    path = str(Path(queue_url.removeprefix("sqlite:///")).resolve())
    return SqliteHuey(name, filename=path, serializer=serializer, results=False)


def enqueue_many(huey: Huey, tasks: Sequence[HueyTask]) -> None:
    """Put ``tasks`` on the queue at once, in order: on Redis one LPUSH, on SQLite one transaction
    (one fsync, not one per job); all or none of them."""
    data = [huey.serialize_task(task) for task in tasks]
    storage = huey.storage
    if not data:
        return
    if isinstance(storage, RedisStorage) and not isinstance(storage, RedisPriorityQueue):
        storage.conn.lpush(storage.queue_key, *data)  # popped from the right: the first goes first
    elif isinstance(storage, SqliteStorage):
        rows = [(storage.name, storage.to_blob(item), 0.0) for item in data]
        with storage.db(commit=True) as cursor:  # SqliteStorage.enqueue's statement, for many rows
            cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)
    else:
        for item in data:
            storage.enqueue(item)


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


def _retry_after_s(exc: Exception) -> float | None:
    """The delay the server asked for (a forge's or model server's ``Retry-After``), if it said."""
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) else None


def _retries_left(task: HueyTask | None) -> int:
    return task.retries if task is not None else 0


class Queue:
    """The Huey instance with reviewbot's tasks registered on it, its outbox relay (``relay``) and
    its periodic jobs (``scheduler``). ``enqueue_*`` put one job on the queue (the relay's side)."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        forges: ForgeFactory | None = None,  # default: forge_for, with the token prefix and the App keys
        retry_delay_s: float | None = None,  # default: REVIEW_RETRY_DELAY_S times settings.period_scale
        period_scale: float | None = None,  # default: settings.period_scale
    ) -> None:
        self.settings, self.engine = settings, engine
        box = secret_box(settings)
        prefix, app_keys = settings.token_env_prefix, AppKeys(engine, box)  # App projects: App tokens
        self.forges = forges or partial(forge_for, token_env_prefix=prefix, app_keys=app_keys)
        self.period_scale = settings.period_scale if period_scale is None else period_scale
        if retry_delay_s is None:
            retry_delay_s = REVIEW_RETRY_DELAY_S * self.period_scale
        self.retry_delay_s = retry_delay_s
        self.huey = make_huey(settings.queue_url, box.queue_key())
        self.relay = Relay(engine, self._send)
        self.etags: ETags = {}  # this process's conditional polls
        self.roles = RoleCache()  # reviewers' roles, read from the forges a few minutes ago at most
        self._running: dict[int, tuple[str, str]] = {}  # review id -> (lease, owner), runs in this process
        self._stopping = threading.Event()  # set once this consumer hands its jobs back
        # Forge calls: retried with backoff; the task sees its retries left (``task``). A review
        # counts its own attempts (``Review.attempts``) and reschedules itself.
        with_retries: dict[str, Any] = {
            "retries": TASK_RETRIES, "retry_delay": retry_delay_s, "retry_backoff": 2, "context": True
        }  # fmt: skip
        feedback_delay = FEEDBACK_RETRY_DELAY_S if retry_delay_s else 0
        huey = self.huey
        self._review = huey.task(name="review")(self.review)
        self._feedback = huey.task(name="feedback", retries=FEEDBACK_RETRIES, retry_delay=feedback_delay)(
            self.feedback
        )
        self._acknowledge = huey.task(name="acknowledge", **with_retries)(self.acknowledge)
        self._roles = huey.task(name="roles", **with_retries)(self.resolve_roles)
        self._gate = huey.task(name="gate", **with_retries)(self.gate)
        self._post = huey.task(name="post", **with_retries)(self.post)
        huey.signal(SIGNAL_ERROR)(self.on_error)
        huey.signal(SIGNAL_INTERRUPTED)(self.on_interrupted)
        huey.pre_execute(name="hand back when stopping")(self.refuse_when_stopping)

    # --- the relay's side

    def enqueue_review(self, review_id: int, delay_s: float = 0) -> None:
        if delay_s > 0:
            self._review.schedule((review_id,), delay=delay_s)
        else:
            self._review(review_id)

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None:
        self._feedback(project_id, delivery_id, signal)

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None:
        self._acknowledge(finding_id, signal)

    def enqueue_roles(self, project_id: int) -> None:
        self._roles(project_id)

    def _send(self, jobs: Sequence[tuple[Job, tuple[int | Signal, ...]]]) -> None:
        """The relay's batch of outbox jobs, onto the queue at once."""
        tasks = {Job.REVIEW: self._review, Job.FEEDBACK: self._feedback}
        tasks |= {Job.ACKNOWLEDGE: self._acknowledge, Job.ROLES: self._roles}
        tasks |= {Job.GATE: self._gate, Job.POST: self._post}
        enqueue_many(self.huey, [tasks[job].s(*args) for job, args in jobs])

    def wake(self) -> None:
        """Jobs were staged in the outbox and committed: send them soon (the intake's ``Jobs``)."""
        self.relay.wake()

    def _flush_outbox(self) -> None:
        """Send what this task staged now; if the queue refuses, the periodic re-send will."""
        try:
            self.relay.send_all()
        except Exception as exc:  # the queue is down: the rows wait in the outbox
            log.warning("could not send staged jobs yet (they stay in the outbox): %s", exc)

    # --- the tasks

    def review(self, review_id: int) -> str:
        """Run one review, at most one per merge request at a time across all workers and hosts."""
        with Session(self.engine) as session:
            row = session.get(Review, review_id)
        if row is None:
            log.warning("review %s does not exist; dropping its job", review_id)
            return "missing"
        if row.status in FINAL:
            return row.status  # a repeated job
        name = lease.review_lease(row.project_id, row.mr_number)
        owner, ttl = lease.new_owner(), self.settings.lease_ttl_s
        until = lease.acquire(self.engine, name, owner, ttl)
        if until is None:
            return self._wait_for_lease(review_id)
        self._running[review_id] = (name, owner)
        ended: str | None = None
        try:
            with lease.Heartbeat(self.engine, name, owner, ttl, on_renew=partial(self._mirror, review_id)):
                ended = self._start_attempt(review_id, until)
                status = ended or run_review_job(review_id, self.settings, self.engine, self.forges)
        except (ForgeError, LLMError) as exc:
            status = self._after_failure(review_id, exc)
        except Exception as exc:  # a bug: no retry, the review says what it was
            log.exception("review %s failed with an internal error", review_id)
            mark_failed(self.engine, review_id, f"internal error: {exc!r}")
            status = ReviewStatus.FAILED
        finally:
            if self._running.pop(review_id, None) is not None:
                lease.release(self.engine, name, owner)
        if status == ReviewStatus.FAILED:
            self._gate_failed(row.project_id, row.mr_number)
        if status in FINAL and ended is None:  # a repeated job, or one that gave up, counted already
            metrics.REVIEWS.labels(status).inc()
        return status

    def _start_attempt(self, review_id: int, lease_until: datetime) -> str | None:
        """Count a run and mark the review running under the lease (None: run it); or the status
        of a review with nothing to run: finished already, or out of attempts (failed now, with
        its last error)."""
        with Session(self.engine) as session:
            review = session.get(Review, review_id)
            assert review is not None
            if review.status in FINAL:
                return review.status
            if review.attempts >= self.settings.review_max_attempts:
                last = review.error or "its worker stopped while running it"
                review.status, review.finished_at = ReviewStatus.FAILED, datetime.now(UTC)
                review.error = f"gave up after {review.attempts} attempts; the last: {last}"
                session.add(review)
                session.commit()
                metrics.REVIEWS.labels(ReviewStatus.FAILED.value).inc()
                return ReviewStatus.FAILED
            review.attempts += 1
            review.status, review.lease_until = ReviewStatus.RUNNING, lease_until
            review.started_at = datetime.now(UTC)
            session.add(review)
            session.commit()
            return None

    def _mirror(self, review_id: int, lease_until: datetime) -> None:
        """The heartbeat renewed the lease: so does the review (the stale sweep reads it there)."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(Review)
                .where(col(Review.id) == review_id, col(Review.status) == ReviewStatus.RUNNING)
                .values(lease_until=lease_until)
            )

    def _wait_for_lease(self, review_id: int) -> str:
        """The merge request's lease is held by a live worker: try again later, spending no attempt.
        A copy of a review that is running elsewhere is dropped (its lease holder runs it)."""
        later = datetime.now(UTC) + timedelta(seconds=LOCKED_RETRY_DELAY_S) + STALE_QUEUED
        with self.engine.begin() as connection:
            waiting = connection.execute(
                sa.update(Review)
                .where(col(Review.id) == review_id, col(Review.status) == ReviewStatus.QUEUED)
                .values(lease_until=later)
            ).rowcount
        if not waiting:
            return "running elsewhere"
        self._schedule(review_id, LOCKED_RETRY_DELAY_S)
        return "locked"

    def _after_failure(self, review_id: int, exc: ForgeError | LLMError) -> str:
        """A retryable failure is retried after a delay while attempts are left; any other fails."""
        with Session(self.engine) as session:
            review = session.get(Review, review_id)
            assert review is not None
            attempts = review.attempts
        if not _retryable(exc):
            mark_failed(self.engine, review_id, str(exc))
            return ReviewStatus.FAILED
        if attempts >= self.settings.review_max_attempts:
            mark_failed(self.engine, review_id, f"gave up after {attempts} attempts; the last: {exc}")
            return ReviewStatus.FAILED
        delay = _retry_after_s(exc)
        if delay is None:
            delay = self.retry_delay_s * 2 ** (attempts - 1)
        log.warning("review %s failed (attempt %s), retrying in %.0f s: %s", review_id, attempts, delay, exc)
        later = datetime.now(UTC) + timedelta(seconds=delay) + STALE_QUEUED
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(Review)
                .where(col(Review.id) == review_id)
                .values(status=ReviewStatus.QUEUED, lease_until=later, error=str(exc))
            )
        self._schedule(review_id, delay)
        return "retrying"

    def _gate_failed(self, project_id: int, mr_number: int) -> None:
        """A failed review says so on its merge request's gate, when the project has one."""
        with Session(self.engine) as session:
            project = session.get(Project, project_id)
            if project is None or gate_severity(project) is None:
                return
            stage(session, Job.GATE, project_id, mr_number)
            session.commit()
        self._flush_outbox()

    def _schedule(self, review_id: int, delay_s: float) -> None:
        try:
            self.enqueue_review(review_id, delay_s)
        except Exception as exc:  # the queue is down: the stale sweep queues it once its lease_until is past
            log.warning("could not reschedule review %s (the sweep will): %s", review_id, exc)

    def feedback(self, project_id: int, delivery_id: int, signal: Signal) -> str:
        """Record a signal whose finding was not known when it arrived; retried until it is."""
        with Session(self.engine) as session:
            applied = apply_signal(session, project_id, signal)
            if applied is None:
                raise FindingNotYet(f"no finding for {signal.describe()} yet")
            finding, changed = applied
            stage_follow_ups(session, project_id, finding, signal, changed)  # with the signal, or not at all
            session.commit()
        _set_outcome(self.engine, delivery_id, f"recorded {signal.kind}")
        self._flush_outbox()
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

    def gate(self, project_id: int, mr_number: int, task: HueyTask | None = None) -> str:
        """Set the merge request's ``reviewbot`` status from its latest review (``bot.review.gate``),
        after reading the roles of signals recorded without one: a dismissal counts once its
        author's role is known."""
        with Session(self.engine) as session:
            project = session.get(Project, project_id)
            if project is None or gate_severity(project) is None:
                return "no gate"
            forge = self.forges(project)
            try:
                resolve_roles(session, project_id, forge.member_role, self.roles)
                session.commit()
                return update_gate(session, forge, project, mr_number)
            except ForgeError as exc:
                if exc.retryable and _retries_left(task) > 0:
                    raise
                log.warning("could not set the status of %s!%s: %s", project.path, mr_number, exc)
                return "failed"

    def post(self, review_id: int, task: HueyTask | None = None) -> str:
        """Post the review's findings an admin unsuppressed (``reviewbot feedback unsuppress``)."""
        try:
            return post_unsuppressed(review_id, self.engine, self.forges)
        except ForgeError as exc:
            if exc.retryable and _retries_left(task) > 0:
                raise
            log.warning("could not post the unsuppressed findings of review %s: %s", review_id, exc)
            return "failed"

    # --- Huey's signals

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

    def on_interrupted(self, signal_name: str, task: HueyTask) -> None:
        """Huey's interrupted signal: the consumer is stopping and ``task`` did not finish within the
        shutdown timeout. Its job goes back to the outbox; a review also gives its lease back, is
        queued again and gets back the attempt (stopping a worker is not the review's fault)."""
        del signal_name
        self._stopping.set()
        held = self._running.pop(task.args[0], None) if task.name == Job.REVIEW else None
        try:
            with Session(self.engine) as session:
                if task.name == Job.REVIEW:
                    review = session.get(Review, task.args[0])
                    if review is None or review.status != ReviewStatus.RUNNING:
                        return  # it ended after all
                    review.status, review.lease_until = ReviewStatus.QUEUED, datetime.now(UTC) + STALE_QUEUED
                    review.attempts = max(review.attempts - 1, 0)
                    review.error = "handed back: its worker stopped"
                    session.add(review)
                stage(session, Job(task.name), *task.args)
                session.commit()
        finally:
            if held is not None:
                lease.release(self.engine, *held)
        log.warning("stopping: %s %s handed back to the queue", task.name, task.args)
        self._flush_outbox()

    def refuse_when_stopping(self, task: HueyTask) -> None:
        """Huey's pre-execute hook. A worker thread of a stopping consumer can still take a job (Huey
        checks its stop flag between reads, and a blocking read may outlast the shutdown timeout) —
        even the one just handed back, whose lease it would take and keep as the process exits. Such
        a job goes back to the outbox, for a live worker's relay, and is not run here."""
        if not self._stopping.is_set():
            return
        with Session(self.engine) as session:
            stage(session, Job(task.name), *task.args)
            session.commit()
        log.warning("stopping: %s %s left in the outbox for another worker", task.name, task.args)
        raise CancelExecution

    # --- the periodic jobs

    def periodic_jobs(self) -> list[Periodic]:
        """What runs once per period across all workers (``bot.queue.schedule``)."""
        scale = self.period_scale
        jobs = [
            Periodic("poll_feedback", PERIODS_S["poll_feedback"] * scale, self.poll_feedback),
            Periodic("requeue_stale", PERIODS_S["requeue_stale"] * scale, self.requeue_stale),
            Periodic("resend_outbox", PERIODS_S["resend_outbox"] * scale, self.relay.send_all),
            Periodic("reconcile", self.settings.reconcile_minutes * 60 * scale, self.reconcile),
            Periodic("canary", PERIODS_S["canary"] * scale, self.check_canaries),
        ]
        if self.settings.retention_days is not None:
            jobs.append(Periodic("prune", PERIODS_S["prune"] * scale, self.prune))
        return jobs

    def scheduler(self) -> Scheduler:
        return Scheduler(self.engine, self.periodic_jobs())

    def poll_feedback(self, now: datetime | None = None) -> int:
        """Every five minutes: the signals forges send no webhook for (``bot.feedback.polling``)."""
        return poll_feedback(self.engine, self.forges, self.etags, self.roles, now)

    def reconcile(self) -> int:
        """At start-up and every few minutes: a review for each open head that has none
        (``bot.review.reconcile``), staged in the outbox and sent."""
        queued = reconcile(self.engine, self.forges)
        self._flush_outbox()
        return queued

    def check_canaries(self) -> list[str]:
        """Hourly: each running canary rolled back, promoted fully, or left running
        (``bot.feedback.canary``); what happened to each."""
        return canary.check(self.engine, self.settings)

    def prune(self) -> dict[str, int]:
        """Daily, when a retention is set: what no feature needs any more (``bot.retention``)."""
        assert self.settings.retention_days is not None
        return prune(self.engine, timedelta(days=self.settings.retention_days))

    def requeue_stale(self, now: datetime | None = None) -> int:
        """Every minute: queue again the reviews whose job was lost — running, with their lease past
        (the worker died), or queued and not picked up by their ``lease_until`` (or, never picked up,
        ``STALE_QUEUED`` after creation). Each is given a new ``lease_until`` a window ahead, so the
        next sweeps do not queue it again while its job waits in the queue."""
        now = now or datetime.now(UTC)
        lapsed = sa.or_(
            col(Review.lease_until) < now,
            sa.and_(
                col(Review.lease_until).is_(None),
                sa.or_(
                    sa.and_(
                        col(Review.status) == ReviewStatus.QUEUED, col(Review.created_at) < now - STALE_QUEUED
                    ),
                    sa.and_(
                        col(Review.status) == ReviewStatus.RUNNING,
                        col(Review.started_at) < now - STALE_RUNNING,
                    ),
                ),
            ),
        )
        stale = col(Review.status).in_([ReviewStatus.QUEUED, ReviewStatus.RUNNING]) & lapsed
        requeued = 0
        with Session(self.engine) as session:
            for review in session.exec(select(Review).where(stale)).all():
                assert review.id is not None
                # The same test again, on the row: a heartbeat may have renewed it since the read.
                values: dict[str, object] = {"status": ReviewStatus.QUEUED, "lease_until": now + STALE_QUEUED}
                if review.status == ReviewStatus.RUNNING:
                    values["error"] = "its worker stopped while running it (its lease expired)"
                taken = (
                    session.connection()
                    .execute(
                        sa.update(Review)
                        .where(col(Review.id) == review.id, col(Review.status) == review.status, lapsed)
                        .values(values)
                    )
                    .rowcount
                )
                if taken:
                    log.warning(
                        "review %s looks lost (%s, lease past); queueing it again", review.id, review.status
                    )
                    stage(session, Job.REVIEW, review.id)
                    requeued += 1
            session.commit()
        self._flush_outbox()
        return requeued
