"""Real ``reviewbot worker`` processes on a Redis queue of the test's own: each periodic job runs once
per period across two workers; SIGTERM mid-review finishes the job within the shutdown timeout or
hands it back (lease released, review queued again, no attempt spent) for the next worker."""

from __future__ import annotations

import itertools
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, select

from bot.models import Lease, Review, ReviewStatus
from bot.queue import Queue, lease
from tests.queue.slow_forge import slow_forge
from tests.support.db import session_scope
from tests.support.processes import (
    Redis,
    redis_server,
    reviewbot_env,
    start_reviewbot,
    start_worker,
    wait_for,
)
from tests.support.secrets import SECRET_KEY, project_row, settings_with_key

SCALE = 0.02  # periods: the sweep 1.2 s, the outbox re-send 0.6 s, the feedback poll and reconciliation 6 s
CLAIMED = re.compile(r"periodic job (\w+): claimed at (\S+), until")


def worker_env(engine: sa.Engine, redis: Redis, **extra: str) -> dict[str, str]:
    database_url = engine.url.render_as_string(hide_password=False)
    env = reviewbot_env(
        database_url=database_url, queue_url=redis.url(), secret_key=SECRET_KEY, log_level="INFO"
    )
    return {**env, **extra}


def test_two_workers_run_each_periodic_job_once_per_period(engine: sa.Engine, tmp_path: Path) -> None:
    with redis_server() as redis:
        env = worker_env(engine, redis, REVIEWBOT_PERIOD_SCALE=str(SCALE))
        workers = [start_worker(f"worker-{n}", env, tmp_path) for n in (1, 2)]
        try:
            time.sleep(15)
        finally:
            for worker in workers:
                worker.stop()
        logs = [worker.output() for worker in workers]
    starts: dict[str, list[tuple[datetime, int]]] = {}
    for index, log in enumerate(logs):
        for job, when in CLAIMED.findall(log):
            starts.setdefault(job, []).append((datetime.fromisoformat(when), index))
    periods = {"requeue_stale": 60 * SCALE, "resend_outbox": 30 * SCALE, "poll_feedback": 300 * SCALE}
    periods |= {"reconcile": 300 * SCALE, "prune": 86400 * SCALE, "canary": 3600 * SCALE}
    assert set(starts) == set(periods), logs
    for job, runs in starts.items():
        times = sorted(when for when, _ in runs)
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
        assert all(gap >= periods[job] - 1e-6 for gap in gaps), (job, gaps)  # never twice in one period
    assert len(starts["prune"]) == len(starts["canary"]) == 1  # daily, hourly: once, though two workers ran
    assert 6 <= len(starts["requeue_stale"]) <= 19  # ~15 s / 1.2 s = 12.5, late on a busy machine; twice: 25
    assert len(starts["poll_feedback"]) in (2, 3)
    assert {index for runs in starts.values() for _, index in runs} == {0, 1}  # both took their turns


def queued_review(engine: sa.Engine, forge_url: str, redis: Redis) -> int:
    with session_scope(engine) as session:
        project = project_row("s", forge="gitlab", forge_url=forge_url, path="g/app")
        session.add(project)
        session.flush()
        assert project.id is not None
        review = Review(project_id=project.id, mr_number=3, head_sha="c" * 40)
        session.add(review)
        session.flush()
        assert review.id is not None
        review_id = review.id
    Queue(settings_with_key(queue_url=redis.url()), engine).enqueue_review(review_id)
    return review_id


def review_row(engine: sa.Engine, review_id: int) -> Review:
    with Session(engine) as session:
        row = session.get(Review, review_id)
        assert row is not None
        return row


def test_sigterm_mid_review_hands_it_back_to_the_next_worker(engine: sa.Engine, tmp_path: Path) -> None:
    with redis_server() as redis, slow_forge() as forge:
        forge.delay_s = 30  # the review hangs on the forge, longer than the shutdown timeout
        review_id = queued_review(engine, forge.url, redis)
        env = worker_env(engine, redis, GITLAB_TOKEN="bot-token")
        worker = start_reviewbot("stopped", env, "worker", "--shutdown-timeout", "1", log_dir=tmp_path)
        wait_for(
            "the review to run", lambda: review_row(engine, review_id).status == ReviewStatus.RUNNING, 30
        )
        stopped_at = time.monotonic()
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
        took = time.monotonic() - stopped_at
        row = review_row(engine, review_id)
        assert row.status == ReviewStatus.QUEUED, worker.output()
        assert row.attempts == 0  # a stop is not the review's fault
        assert row.error == "handed back: its worker stopped"
        with Session(engine) as session:
            held = session.exec(select(Lease.name)).all()
        assert not [name for name in held if name.startswith("review:")]  # released now, not after its TTL
        assert "review (" in worker.output()
        assert "handed back to the queue" in worker.output()
        assert took < 10  # the shutdown timeout (1 s), not the forge's 30 s

        forge.delay_s = 0
        successor = start_worker("next", env, tmp_path)
        try:
            wait_for(
                "the next worker to finish it",
                lambda: review_row(engine, review_id).status != ReviewStatus.QUEUED,
                30,
            )
        finally:
            successor.stop()
        row = review_row(engine, review_id)
        assert row.status == ReviewStatus.FAILED, successor.output()  # the forge says the MR is gone
        assert row.attempts == 1
        assert "404" in (row.error or "")


def test_sigterm_lets_a_review_finish_within_the_shutdown_timeout(engine: sa.Engine, tmp_path: Path) -> None:
    with redis_server() as redis, slow_forge() as forge:
        forge.delay_s = 3
        review_id = queued_review(engine, forge.url, redis)
        env = worker_env(engine, redis, GITLAB_TOKEN="bot-token")
        worker = start_worker("finishing", env, tmp_path)
        wait_for(
            "the review to run", lambda: review_row(engine, review_id).status == ReviewStatus.RUNNING, 30
        )
        worker.send(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
        row = review_row(engine, review_id)
        assert row.status == ReviewStatus.FAILED, worker.output()  # finished: the forge's answer recorded
        assert row.attempts == 1
        assert "404" in (row.error or "")
        assert "handed back" not in worker.output()
        assert Queue(settings_with_key(queue_url=redis.url()), engine).huey.pending_count() == 0


def test_a_review_whose_worker_was_killed_is_taken_over_after_its_lease(
    engine: sa.Engine, tmp_path: Path
) -> None:
    with redis_server() as redis, slow_forge() as forge:
        forge.delay_s = 30
        review_id = queued_review(engine, forge.url, redis)
        # A 5-second lease, and the stale sweep every 0.6 s instead of every minute.
        env = worker_env(engine, redis, GITLAB_TOKEN="bot-token", REVIEWBOT_PERIOD_SCALE="0.01")
        env["REVIEWBOT_LEASE_TTL_S"] = "5"
        killed = start_worker("killed", env, tmp_path)
        wait_for(
            "the review to run", lambda: review_row(engine, review_id).status == ReviewStatus.RUNNING, 30
        )
        killed.kill()  # SIGKILL: no handler runs, the lease stays held
        row = review_row(engine, review_id)
        assert row.status == ReviewStatus.RUNNING
        assert lease.acquire(engine, lease.review_lease(row.project_id, 3), "a probe", 5) is None  # held

        forge.delay_s = 0
        successor = start_worker("next", env, tmp_path)
        try:
            wait_for("the review to be taken over", lambda: review_row(engine, review_id).attempts == 2, 60)
            wait_for("it to finish", lambda: review_row(engine, review_id).status == ReviewStatus.FAILED, 30)
        finally:
            successor.stop()
        row = review_row(engine, review_id)
        assert "404" in (row.error or ""), successor.output()  # ran to the forge's answer
        assert "looks lost" in successor.output()  # the sweep found its lease past, and queued it once
        assert successor.output().count("looks lost") == 1
