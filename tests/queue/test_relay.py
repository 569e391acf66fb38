"""The outbox relay: rows go to the queue in id order and are stamped sent; with the queue down they
wait, none lost, and go when it is back; two relays at once never send a row twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.config import load_settings
from bot.events import Signal, SignalKind
from bot.models import Delivery, Feedback, Finding, Outbox, Review, ReviewStatus
from bot.outbox import Job, stage
from bot.queue import Queue
from tests.support.db import session_scope
from tests.support.processes import redis_server, wait_for
from tests.support.secrets import project_row, settings_with_key


def stage_jobs(engine: sa.Engine, count: int) -> None:
    with Session(engine) as session:
        for number in range(count):
            stage(session, Job.ROLES, number)
        session.commit()


def unsent(engine: sa.Engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all())


def test_rows_go_in_order_and_are_stamped_sent(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine)
    signal = Signal(SignalKind.SEVERITY, "minor", "ana", "e1", comment_id="5", mr_number=3)
    with Session(engine) as session:
        stage(session, Job.REVIEW, 7)
        stage(session, Job.ACKNOWLEDGE, 3, signal)
        stage(session, Job.FEEDBACK, 1, 2, signal)
        session.commit()
    assert queue.relay.send_pending() == 3
    assert queue.relay.send_pending() == 0  # stamped: never sent again
    assert unsent(engine) == 0
    jobs = [queue.huey.dequeue() for _ in range(3)]
    assert [(job.name, job.args) for job in jobs] == [
        ("review", (7,)), ("acknowledge", (3, signal)), ("feedback", (1, 2, signal)),
    ]  # fmt: skip


def test_with_the_queue_down_rows_wait_and_go_when_it_is_back(engine: sa.Engine) -> None:
    with redis_server() as redis:
        queue = Queue(settings_with_key(queue_url=redis.url()), engine)
        stage_jobs(engine, 5)
        redis.stop()
        with pytest.raises(Exception, match=r"(?i)connect"):
            queue.relay.send_pending()
        assert unsent(engine) == 5  # nothing lost, nothing stamped
        queue.wake()  # the intake's relay thread: it keeps trying
        time.sleep(1)
        assert unsent(engine) == 5
        redis.start()
        wait_for("the relay to send the rows", lambda: unsent(engine) == 0, 30)
        queue.relay.stop()
        assert queue.huey.pending_count() == 5


def test_two_relays_at_once_send_each_row_once(engine: sa.Engine, tmp_path: Path) -> None:
    settings = load_settings(queue_url=f"sqlite:///{tmp_path}/q.db")
    relays = [Queue(settings, engine).relay for _ in range(2)]
    stage_jobs(engine, 1200)
    sent: list[int] = []
    start = threading.Barrier(2)

    def relay_all(index: int) -> None:
        start.wait()
        sent.append(relays[index].send_all())

    threads = [threading.Thread(target=relay_all, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue = Queue(settings, engine)
    assert sum(sent) == 1200
    assert queue.huey.pending_count() == 1200  # no row sent twice
    assert sorted(task.args[0] for task in iter(queue.huey.dequeue, None)) == list(range(1200))


def test_wake_sends_soon(engine: sa.Engine, tmp_path: Path) -> None:
    queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine)
    stage_jobs(engine, 3)
    started = time.monotonic()
    queue.wake()
    wait_for("the relay to send the rows", lambda: unsent(engine) == 0, 10, interval_s=0.005)
    took = time.monotonic() - started
    queue.relay.stop()
    assert queue.huey.pending_count() == 3
    assert took < 1.0


def test_feedback_stages_its_follow_up_jobs_with_the_signal(engine: sa.Engine) -> None:
    """With the queue down, a late feedback job records its signal and the roles and acknowledgement
    jobs it causes in one transaction: they wait in the outbox, and go when the queue is back."""
    with session_scope(engine) as session:
        project = project_row("s", forge="gitlab", forge_url="http://forge.test", path="g/app")
        session.add(project)
        session.flush()
        assert project.id is not None
        review = Review(project_id=project.id, mr_number=3, head_sha="c" * 40, status=ReviewStatus.DONE)
        session.add(review)
        session.flush()
        assert review.id is not None
        session.add(
            Finding(review_id=review.id, path="app.py", line=3, severity="major", title="Leak", review="r",
                    fingerprint="f" * 16, model_version="base", forge_thread_id="disc-1")
        )  # fmt: skip
        delivery = Delivery(forge="gitlab", delivery_id="d-1")
        session.add(delivery)
        session.flush()
        assert delivery.id is not None
        project_id, delivery_id = project.id, delivery.id
    command = Signal(
        SignalKind.SEVERITY, "minor", "ana", "note-77", thread_id="disc-1", reply_id="77", mr_number=3
    )
    with redis_server() as redis:
        queue = Queue(settings_with_key(queue_url=redis.url()), engine)
        redis.stop()
        assert queue.feedback(project_id, delivery_id, command) == "recorded"
        with Session(engine) as session:
            assert session.exec(select(Feedback)).one().value == "minor"
            staged = session.exec(select(Outbox).order_by(col(Outbox.id))).all()
        assert [(row.task, row.sent_at) for row in staged] == [("roles", None), ("acknowledge", None)]
        redis.start()
        queue.relay.drain()
        assert [task.name for task in iter(queue.huey.dequeue, None)] == ["roles", "acknowledge"]
