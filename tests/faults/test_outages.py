"""PostgreSQL, then Redis, stopped and started while a burst of webhook deliveries reaches a real
``reviewbot serve``: every delivery is either answered with an error the forge sees or recorded, and
every merge request is reviewed exactly once — through the outbox when the queue was down, through
the reconciliation poll when the database was down and the forge never redelivered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlmodel import Session, select

from bot.models import Delivery, ReviewStatus
from tests.faults.world import World, delivery, send
from tests.support.fake_gitlab import MergeRequest
from tests.support.processes import Postgres, postgres, start_serve, start_worker, wait_for

MERGE_REQUESTS = 30
PACE_S = 0.15  # one delivery every PACE_S, in flight together, while the outages happen
SETTLE_S = 150  # the reconciliation poll leaves a merge request to its webhook for its first minute


@pytest.fixture
def private_postgres() -> Iterator[Postgres]:
    """This test stops its PostgreSQL: one of its own, not the suite's."""
    with postgres() as server:
        yield server


@pytest.mark.parametrize("world", ["postgres-redis"], indirect=True)
def test_database_and_queue_outages_during_a_burst_of_deliveries(
    world: World, private_postgres: Postgres
) -> None:
    database, queue = world.postgres, world.redis
    assert database is private_postgres
    assert queue is not None
    mrs = [world.add_merge_request(changed=(n % 30,)) for n in range(MERGE_REQUESTS)]
    env = world.env(reconcile_minutes="1", lease_ttl_s="5")
    server, url = start_serve("serve", env, world.log_dir)
    answers: dict[int, list[int]] = {}  # MR number -> statuses of its deliveries, in order
    keys: dict[int, tuple[str, bytes, dict[str, str]]] = {}
    spans: dict[int, tuple[float, float]] = {}  # MR number -> when its first delivery was sent, answered
    try:
        with ThreadPoolExecutor(8) as pool:

            def deliver(mr: MergeRequest) -> None:
                key = keys[mr.iid] = delivery(mr)
                sent = time.monotonic()
                answers[mr.iid] = [send(url, key[1], key[2])]
                spans[mr.iid] = (sent, time.monotonic())

            def burst() -> None:
                for mr in mrs:
                    pool.submit(deliver, mr)
                    time.sleep(PACE_S)

            sender = threading.Thread(target=burst)
            sender.start()
            time.sleep(PACE_S * 5)
            database.stop()  # "fast": connections cut, as an operator's restart
            time.sleep(PACE_S * 8)
            database.start()
            time.sleep(PACE_S * 5)
            queue.stop()
            queue_down = time.monotonic()
            time.sleep(PACE_S * 8)
            queue_up = time.monotonic()
            queue.start()
            sender.join()
        # The queue's outage is the outbox's to absorb: a delivery made while it was down is accepted.
        while_queue_down = [n for n, (at, done) in spans.items() if queue_down < at and done < queue_up]
        assert while_queue_down, spans
        assert all(answers[n][0] < 300 for n in while_queue_down), {n: answers[n] for n in while_queue_down}
        refused = {n for n, statuses in answers.items() if statuses[0] >= 500}
        # The forge redelivers half of what it saw refused (GitLab may; GitHub never does): the
        # reconciliation poll must find the rest.
        assert len(refused) >= 2, answers  # the outage met the burst
        redelivered = sorted(refused)[::2]
        for number in redelivered:
            _, body, headers = keys[number]
            answers[number].append(send(url, body, headers))
        assert server.running(), server.output()[-3000:]
        assert all(statuses[-1] < 500 for n, statuses in answers.items() if n in redelivered), answers

        # A delivery answered 2xx is in the database; one answered 5xx is the forge's to resend.
        with Session(world.engine) as session:
            recorded = set(session.exec(select(Delivery.delivery_id)).all())
        accepted = {n for n, statuses in answers.items() if statuses[-1] < 300}
        assert {keys[n][0] for n in accepted} <= recorded
        assert accepted | refused == {mr.iid for mr in mrs}

        worker = start_worker("worker", env, world.log_dir, workers=2)
        try:
            wait_for(
                "every merge request to be reviewed",
                lambda: all(world.done_reviews_of(mr) for mr in mrs) and world.settled(),
                SETTLE_S,
                interval_s=0.5,
            )
        finally:
            worker.stop()
    finally:
        server.stop()

    for mr in mrs:
        assert world.done_reviews_of(mr) == 1, (mr.iid, world.reviews())
    assert all(r.status == ReviewStatus.DONE for r in world.reviews())
    lost_webhooks = len(refused) - len(redelivered)
    name = (
        f"PostgreSQL then Redis stopped during {MERGE_REQUESTS} deliveries ({len(refused)} answered 5xx, "
        f"{len(redelivered)} redelivered, {lost_webhooks} left to the reconciliation poll; "
        f"{len(while_queue_down)} accepted while Redis was down)"
    )
    tally = world.tally(name, faults=2, reviewed=mrs)
    assert (tally.completed, tally.duplicates, tally.stuck, tally.lost) == (MERGE_REQUESTS, 0, 0, 0), tally
