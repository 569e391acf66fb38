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
