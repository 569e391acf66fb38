"""The job queue: failures recorded on the review, attempts and retries, the per-MR lease, lost jobs
swept up once, a stopping worker's job handed back, Redis, signed jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.config import load_settings
from bot.forges.base import Forge, ForgeError
from bot.models import Outbox, Project, Review, ReviewStatus
from bot.queue import Queue, lease
from tests.support.db import session_scope
from tests.support.secrets import project_row


def failing_forge(retryable: bool):  # type: ignore[no-untyped-def]
    def factory(project: Project) -> Forge:
        raise ForgeError(f"{project.path}: forge says no", retryable=retryable)

    return factory


def add_review(engine: sa.Engine, **fields: object) -> int:
    with session_scope(engine) as session:
        project = project_row("s", forge="gitlab", forge_url="http://forge.test", path="g/app")
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=3, head_sha="c" * 40, **fields)
        session.add(review)
        session.flush()
        assert review.id is not None
        return review.id


def review_row(engine: sa.Engine, review_id: int) -> Review:
    with Session(engine) as session:
        row = session.get(Review, review_id)
        assert row is not None
        return row


def run_pending(queue: Queue) -> int:
    """Execute what the queue holds, as a consumer would; how many ran (a job scheduled for later goes
    to Huey's schedule and does not count)."""
    ran = 0
    for _ in range(50):
        task = queue.huey.dequeue()
        if task is None:
            return ran
        later = task.eta is not None and task.eta > datetime.now(UTC).replace(tzinfo=None)
        queue.huey.execute(task)  # Huey catches the task's errors and requeues those with retries left
        ran += not later
    raise AssertionError("the queue never ran dry")


def test_non_retryable_forge_error_fails_the_review_at_once(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    review_id = add_review(engine)
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 1
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert "forge says no" in (row.error or "")


def test_retryable_error_is_retried_then_recorded(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(True), retry_delay_s=0
    )
    review_id = add_review(engine)
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 5  # REVIEWBOT_REVIEW_MAX_ATTEMPTS runs, then no more
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert row.attempts == 5
    assert "gave up after 5 attempts" in (row.error or "")
    assert "forge says no" in (row.error or "")


def test_a_bug_fails_the_review_at_once(engine: sa.Engine, tmp_path: Path) -> None:
    def buggy(_project: Project) -> Forge:
        raise KeyError("a bug")

    queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, buggy, retry_delay_s=0)
    review_id = add_review(engine)
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 1  # no retry
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert row.error == "internal error: KeyError('a bug')"


def test_the_forge_retry_after_is_the_delay(engine: sa.Engine, tmp_path: Path) -> None:
    def busy(_project: Project) -> Forge:
        raise ForgeError("429 slow down", retryable=True, retry_after_s=120)

    queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, busy, retry_delay_s=0)
    review_id = add_review(engine)
    queue.enqueue_review(review_id)
    before = datetime.now(UTC)
    assert run_pending(queue) == 1
    (scheduled,) = queue.huey.scheduled()
    assert scheduled.args == (review_id,)
    eta = scheduled.eta.replace(tzinfo=UTC)  # Huey keeps naive UTC
    assert before + timedelta(seconds=119) < eta < datetime.now(UTC) + timedelta(seconds=121)
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.QUEUED
    assert row.attempts == 1
    assert row.error == "429 slow down"


def test_a_locked_merge_request_waits_without_spending_an_attempt(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    review_id = add_review(engine)
    row = review_row(engine, review_id)
    name = lease.review_lease(row.project_id, row.mr_number)
    assert lease.acquire(engine, name, "a live worker", 60)  # another review of the MR is running
    for _ in range(3):
        queue.enqueue_review(review_id)
        assert run_pending(queue) == 1
        assert review_row(engine, review_id).status == ReviewStatus.QUEUED
    assert queue.huey.scheduled_count() == 3  # each retried later, not run beside the other review
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.QUEUED
    assert row.attempts == 0
    assert row.lease_until is not None  # the sweep leaves it alone while it waits

    lease.release(engine, name, "a live worker")
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 1
    assert review_row(engine, review_id).status == ReviewStatus.FAILED  # ran: the forge said no


def test_a_dead_workers_lease_is_taken_over_after_its_ttl(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    review_id = add_review(engine, status=ReviewStatus.RUNNING, attempts=1)
    row = review_row(engine, review_id)
    name = lease.review_lease(row.project_id, row.mr_number)
    past = datetime.now(UTC) - timedelta(seconds=61)
    lease.acquire(engine, name, "killed with SIGKILL", 60, past)  # expired a second ago
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 1
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert row.attempts == 2
    assert lease.acquire(engine, name, "the next one", 60)  # released after the run


def test_a_review_out_of_attempts_fails_with_its_last_error(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db", review_max_attempts=3),
        engine,
        failing_forge(False),
        retry_delay_s=0,
    )
    why = "its worker stopped while running it (its lease expired)"
    review_id = add_review(engine, attempts=3, error=why)  # three workers died running it (OOM)
    queue.enqueue_review(review_id)
    assert run_pending(queue) == 1
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert row.attempts == 3
    assert row.error == f"gave up after 3 attempts; the last: {why}"


def test_lost_jobs_are_queued_again_once(engine: sa.Engine, tmp_path: Path) -> None:
    """The old sweep keyed on created_at and queued another copy every minute (five sweeps: five
    pending copies, the lock still held). Keyed on the lease: one copy, which takes the lease over."""
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=2)
    never_picked_up = add_review(engine, created_at=long_ago)
    with session_scope(engine) as session:
        project_id = session.get(Review, never_picked_up).project_id  # type: ignore[union-attr]
        killed = Review(
            project_id=project_id, mr_number=4, head_sha="d" * 40, status=ReviewStatus.RUNNING,
            started_at=now - timedelta(minutes=3), lease_until=now - timedelta(seconds=1), attempts=1,
        )  # fmt: skip
        alive = Review(
            project_id=project_id, mr_number=5, head_sha="e" * 40, status=ReviewStatus.RUNNING,
            started_at=long_ago, lease_until=now + timedelta(minutes=10),  # renewed by its heartbeat
        )  # fmt: skip
        session.add_all([killed, alive])
        session.add(Review(project_id=project_id, mr_number=6, head_sha="f" * 40, created_at=long_ago,
                           status=ReviewStatus.DONE))  # fmt: skip
        session.add(Review(project_id=project_id, mr_number=7, head_sha="a" * 40))  # queued just now
        session.flush()
        assert killed.id is not None
        killed_id = killed.id
    lease.acquire(engine, lease.review_lease(project_id, 4), "killed", 60, now - timedelta(seconds=61))

    swept = [queue.requeue_stale(now + timedelta(minutes=minute)) for minute in range(5)]
    assert swept == [2, 0, 0, 0, 0]
    assert queue.huey.pending_count() == 2  # one copy each, not five
    assert review_row(engine, killed_id).status == ReviewStatus.QUEUED
    assert "lease expired" in (review_row(engine, killed_id).error or "")

    assert run_pending(queue) == 2  # the copies run: the dead worker's lease is taken over
    assert review_row(engine, killed_id).status == ReviewStatus.FAILED
    assert review_row(engine, killed_id).attempts == 2
    assert review_row(engine, never_picked_up).status == ReviewStatus.FAILED


def test_a_stopping_worker_hands_its_review_back(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    review_id = add_review(engine, status=ReviewStatus.RUNNING, attempts=2)
    row = review_row(engine, review_id)
    name, owner = lease.review_lease(row.project_id, row.mr_number), lease.new_owner()
    lease.acquire(engine, name, owner, 60)
    queue._running[review_id] = (name, owner)  # as review() records the run it holds
    queue.enqueue_review(review_id)
    task = queue.huey.dequeue()  # the job it was running when the stop's timeout ran out

    queue.on_interrupted("interrupted", task)
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.QUEUED
    assert row.attempts == 1
    assert lease.acquire(engine, name, "the next worker", 60)  # released
    assert queue.huey.pending_count() == 1  # queued again, through the outbox
    with Session(engine) as session:
        assert session.exec(select(Outbox)).one().sent_at is not None

    # A thread of the stopping worker takes the job it just handed back: it neither runs it nor
    # takes the lease, and leaves the job in the outbox for a live worker.
    queue.huey.execute(queue.huey.dequeue())
    assert review_row(engine, review_id).status == ReviewStatus.QUEUED
    assert lease.acquire(engine, name, "the next worker", 60)  # still free (ours, from above)
    with Session(engine) as session:
        unsent = session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all()
    assert [(row.task, row.args) for row in unsent] == [("review", [review_id])]


def test_redis_backed_queue(engine: sa.Engine) -> None:
    queue = Queue(
        load_settings(queue_url="redis://127.0.0.1:6379/15"), engine, failing_forge(False), retry_delay_s=0
    )
    queue.huey.flush()
    try:
        review_id = add_review(engine)
        queue.enqueue_review(review_id)
        assert queue.huey.pending_count() == 1
        assert run_pending(queue) == 1
        assert review_row(engine, review_id).status == ReviewStatus.FAILED
    finally:
        queue.huey.flush()


def test_redis_down_is_a_clear_error(engine: sa.Engine) -> None:
    from tests.support.vllm_server import free_port

    queue = Queue(
        load_settings(queue_url=f"redis://127.0.0.1:{free_port()}/0"),
        engine,
        failing_forge(False),
        retry_delay_s=0,
    )
    with pytest.raises(Exception, match=r"(?i)connect"):
        queue.enqueue_review(1)


class _Exploit:
    """What an attacker who can write to Redis would queue against a pickling worker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_the_worker_refuses_jobs_it_did_not_write(tmp_path: Path) -> None:
    """A real worker on a real Redis queue: a pickle and a JSON job with a forged signature are refused
    (and logged); the genuine job behind them runs."""
    import os
    import pickle
    import subprocess
    import sys
    import time

    from bot import db
    from bot.queue import make_huey
    from bot.secrets import secret_box
    from tests.support.secrets import SECRET_KEY, settings_with_key

    queue_url, database_url = "redis://127.0.0.1:6379/12", f"sqlite:///{tmp_path}/bot.db"
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    settings = settings_with_key(database_url=database_url, queue_url=queue_url)
    huey = make_huey(queue_url, secret_box(settings).queue_key())
    huey.flush()
    marker = tmp_path / "pwned"
    huey.storage.enqueue(pickle.dumps(_Exploit(marker)))
    forged = b'{"$":"message","v":["x","feedback",null,0,0,null,{"$":"tuple","v":[1,1,"x"]},{}]}'
    huey.storage.enqueue(b"0" * 64 + b":" + forged)
    review_id = add_review(engine)
    Queue(settings, engine).enqueue_review(review_id)  # genuine: runs, and fails for want of a token

    env = {k: v for k, v in os.environ.items() if k not in ("GITLAB_TOKEN", "GITHUB_TOKEN")}
    env.update(
        REVIEWBOT_DATABASE_URL=database_url, REVIEWBOT_QUEUE_URL=queue_url, REVIEWBOT_SECRET_KEY=SECRET_KEY
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker", "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while review_row(engine, review_id).status != ReviewStatus.FAILED and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0]
        huey.flush()
    assert review_row(engine, review_id).status == ReviewStatus.FAILED, output
    assert not marker.exists()
    assert output.count("refused a queued job that this reviewbot did not write") == 2, output


def test_jobs_round_trip_as_signed_json() -> None:
    from bot.events import Signal, SignalKind
    from bot.queue.codec import ForgedJob, SignedJsonSerializer

    signal = Signal(SignalKind.SEVERITY, "minor", "ana", "e1", comment_id="5", mr_number=3)
    data = (1, {"task": None, "$": 2}, [signal], datetime(2024, 1, 2, tzinfo=UTC))
    serializer = SignedJsonSerializer(b"key")
    raw = serializer.serialize(data)
    assert b"ana" in raw  # JSON, readable; never a pickle
    assert serializer.deserialize(raw) == data
    with pytest.raises(ForgedJob):
        SignedJsonSerializer(b"another key").deserialize(raw)
    with pytest.raises(TypeError):
        serializer.serialize(object())


def test_no_results_are_stored(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    queue.enqueue_review(add_review(engine))
    assert run_pending(queue) == 1  # returned "failed": Huey would keep it forever, and nothing reads it
    assert queue.huey.result_count() == 0


def test_the_periodic_jobs_and_their_periods(engine: sa.Engine, tmp_path: Path) -> None:
    settings = load_settings(queue_url=f"sqlite:///{tmp_path}/q.db", reconcile_minutes=7, retention_days=30)
    periods = {job.name: job.period_s for job in Queue(settings, engine).periodic_jobs()}
    assert periods == {
        "poll_feedback": 300, "requeue_stale": 60, "resend_outbox": 30, "reconcile": 420, "prune": 86400,
        "canary": 3600,
    }  # fmt: skip
    never_pruned = settings.model_copy(update={"retention_days": None})
    assert "prune" not in {job.name for job in Queue(never_pruned, engine, period_scale=0.5).periodic_jobs()}
    halved = {job.name: job.period_s for job in Queue(settings, engine, period_scale=0.5).periodic_jobs()}
    assert halved["requeue_stale"] == 30
