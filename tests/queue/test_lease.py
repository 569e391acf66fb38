"""Leases on the database: atomic acquire, renew, release, a heartbeat, take-over after expiry; and
the periodic jobs' per-period claims, won by exactly one of several schedulers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from bot.models import Lease
from bot.queue import lease
from bot.queue.schedule import Periodic, Scheduler


def expiry(engine: sa.Engine, name: str) -> datetime:
    with Session(engine) as session:
        row = session.get(Lease, name)
        assert row is not None
        return row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)


def test_a_lease_is_held_by_one_owner_until_it_expires(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    assert lease.acquire(engine, "review:1:2", "a", 60, now) == now + timedelta(seconds=60)
    assert lease.acquire(engine, "review:1:2", "b", 60, now + timedelta(seconds=59)) is None
    assert (
        lease.acquire(engine, "review:1:2", "a", 60, now + timedelta(seconds=30)) is not None
    )  # ours: renewed
    assert lease.renew(engine, "review:1:2", "b", 60) is None  # not b's
    # a died (SIGKILL): nobody renews it; past its expiry, b takes it over and a cannot renew any more
    later = now + timedelta(seconds=91)
    assert lease.acquire(engine, "review:1:2", "b", 60, later) == later + timedelta(seconds=60)
    assert lease.renew(engine, "review:1:2", "a", 60, later) is None
    assert not lease.release(engine, "review:1:2", "a")
    assert lease.release(engine, "review:1:2", "b")
    assert lease.acquire(engine, "review:1:2", "c", 60) is not None  # released: free at once


def test_renewing_never_shortens_a_lease(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    lease.acquire(engine, "periodic:prune", "a", 3600, now)
    lease.renew(engine, "periodic:prune", "a", 60, now)
    assert expiry(engine, "periodic:prune") == now + timedelta(seconds=3600)


def test_of_many_racing_for_a_free_lease_exactly_one_wins(engine: sa.Engine) -> None:
    winners: list[str] = []
    start = threading.Barrier(8)

    def race(owner: str) -> None:
        start.wait()
        if lease.acquire(engine, "review:9:9", owner, 60) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=race, args=(f"owner-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_the_heartbeat_keeps_a_lease_past_its_ttl(engine: sa.Engine) -> None:
    renewed: list[datetime] = []
    owner = lease.new_owner()
    assert lease.acquire(engine, "review:1:1", owner, 1.5) is not None
    with lease.Heartbeat(engine, "review:1:1", owner, 1.5, on_renew=renewed.append) as beat:
        time.sleep(2.5)  # longer than the TTL: without the beat, anyone could take it now
        assert lease.acquire(engine, "review:1:1", "someone else", 1.5) is None
    assert len(renewed) >= 2
    assert not beat.lost.is_set()
    assert expiry(engine, "review:1:1") == max(renewed)


def test_the_heartbeat_notices_a_lease_taken_over(engine: sa.Engine) -> None:
    owner = lease.new_owner()
    lease.acquire(engine, "review:1:1", owner, 6, datetime.now(UTC) - timedelta(seconds=10))  # expired
    lease.acquire(engine, "review:1:1", "the next worker", 60)
    with lease.Heartbeat(engine, "review:1:1", owner, 1.5) as beat:
        assert beat.lost.wait(5)


def test_each_period_is_claimed_by_one_scheduler(engine: sa.Engine) -> None:
    def jobs() -> list[Periodic]:
        return [Periodic("sweep", 60, lambda: None), Periodic("poll", 300, lambda: None)]

    first, second = Scheduler(engine, jobs()), Scheduler(engine, jobs())
    now = datetime.now(UTC)
    assert sorted(job.name for job, _, _ in first.claim_due(now)) == [
        "poll",
        "sweep",
    ]  # at start-up: both due
    assert second.claim_due(now + timedelta(seconds=30)) == []
    assert [job.name for job, _, _ in second.claim_due(now + timedelta(seconds=61))] == ["sweep"]
    assert first.claim_due(now + timedelta(seconds=100)) == []
    assert sorted(job.name for job, _, _ in first.claim_due(now + timedelta(seconds=301))) == [
        "poll",
        "sweep",
    ]


def test_a_job_slower_than_its_period_does_not_run_twice_at_once(engine: sa.Engine) -> None:
    running, overlaps, runs = threading.Event(), [], []

    def slow() -> None:
        if running.is_set():
            overlaps.append(1)
        running.set()
        runs.append(1)
        time.sleep(2.5)
        running.clear()

    schedulers = [Scheduler(engine, [Periodic("slow", 1.0, slow)]) for _ in range(2)]
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        for scheduler in schedulers:
            scheduler.run_due()
        time.sleep(0.05)
    time.sleep(2.6)
    assert len(runs) == 2  # the second at once after the first: it ran past its period
    assert not overlaps


def test_a_consumer_is_alive_while_its_heartbeat_is_fresh(engine: sa.Engine) -> None:
    from bot.queue.schedule import CONSUMER_TTL_S, alive_consumers

    scheduler = Scheduler(engine, [])
    assert alive_consumers(engine) == []
    scheduler.beat()
    assert alive_consumers(engine) == [scheduler.owner]
    later = datetime.now(UTC) + timedelta(seconds=CONSUMER_TTL_S + 1)
    assert alive_consumers(engine, later) == []  # it stopped beating: gone
    scheduler.stop()  # a clean stop says so at once
    assert alive_consumers(engine) == []
