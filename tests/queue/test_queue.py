"""The job queue: failures recorded on the review, retries, the per-MR lock, lost jobs swept up, Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from bot.config import load_settings
from bot.forges.base import Forge, ForgeError
from bot.models import Project, Review, ReviewStatus
from bot.queue import Queue
from tests.support.db import session_scope


def failing_forge(retryable: bool):  # type: ignore[no-untyped-def]
    def factory(project: Project) -> Forge:
        raise ForgeError(f"{project.path}: forge says no", retryable=retryable)

    return factory


def add_review(engine: sa.Engine, **fields: object) -> int:
    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url="http://forge.test", path="g/app", webhook_secret="s")
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
    """Execute what the queue holds, as a consumer would (the tests' queues retry without delay)."""
    ran = 0
    while ran < 50:
        task = queue.huey.dequeue()
        if task is None:
            return ran
        queue.huey.execute(task)  # Huey catches the task's errors and requeues those with retries left
        ran += 1
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
    assert run_pending(queue) == 1 + 4  # the first try and REVIEW_RETRIES retries
    row = review_row(engine, review_id)
    assert row.status == ReviewStatus.FAILED
    assert "forge says no" in (row.error or "")


def test_a_locked_merge_request_waits(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    review_id = add_review(engine)
    row = review_row(engine, review_id)
    with queue.huey.lock_task(f"review-{row.project_id}-{row.mr_number}"):
        queue.enqueue_review(review_id)
        task = queue.huey.dequeue()
        queue.huey.execute(task)
        assert queue.huey.scheduled_count() == 1  # retried later, not run beside the other review
    assert review_row(engine, review_id).status == ReviewStatus.QUEUED


def test_lost_jobs_are_queued_again(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, failing_forge(False), retry_delay_s=0
    )
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    lost_queued = add_review(engine, created_at=long_ago)
    with session_scope(engine) as session:
        project_id = session.get(Review, lost_queued).project_id  # type: ignore[union-attr]
        for status, started in [(ReviewStatus.RUNNING, long_ago), (ReviewStatus.RUNNING, datetime.now(UTC))]:
            session.add(
                Review(
                    project_id=project_id, mr_number=4, head_sha="d" * 40, status=status, started_at=started
                )
            )
        session.add(
            Review(
                project_id=project_id,
                mr_number=5,
                head_sha="e" * 40,
                created_at=long_ago,
                status=ReviewStatus.DONE,
            )
        )
        session.add(Review(project_id=project_id, mr_number=6, head_sha="f" * 40))  # queued just now
    assert queue.requeue_stale() == 2
    assert queue.huey.pending_count() == 2


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
