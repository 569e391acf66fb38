"""Periodic jobs, run once per period across every process that runs the queue.

Every ``reviewbot worker`` (and ``reviewbot serve`` with its embedded consumer) runs a ``Scheduler``
thread; a job runs where its claim succeeds. The claim is the lease ``periodic:{job}``, taken until
the period ends (``bot.queue.lease.acquire``: one statement, so of several processes exactly one wins
each period) and renewed while the job runs, so a job slower than its period never runs twice at
once. A process that starts after the lease expired (the whole service was down) runs the job at
once: the reconciliation poll at start-up.

The scheduler also says its process is alive: the lease ``consumer:{owner}``, renewed every
``CONSUMER_BEAT_S`` and released on a clean stop (``alive_consumers``; ``reviewbot doctor`` reads it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.models import Lease
from bot.queue import lease

log = logging.getLogger(__name__)

RUNNING_TTL_S = 60.0  # a running job's claim is renewed this far ahead, a few times a period
CONSUMER_BEAT_S = 10.0
CONSUMER_TTL_S = 3 * CONSUMER_BEAT_S  # two missed beats and a consumer counts as gone
_CONSUMER = "consumer:"


def alive_consumers(engine: sa.Engine, now: datetime | None = None) -> list[str]:
    """The processes consuming the queue now (host:pid:…), from their heartbeats."""
    now = now or datetime.now(UTC)
    with Session(engine) as session:
        rows = session.exec(select(Lease).where(col(Lease.name).startswith(_CONSUMER))).all()
    return sorted(row.name.removeprefix(_CONSUMER) for row in rows if _aware(row.expires_at) > now)


@dataclass(frozen=True)
class Periodic:
    name: str
    period_s: float
    run: Callable[[], object]

    @property
    def lease_name(self) -> str:
        return f"periodic:{self.name}"


class Scheduler:
    """Claims each job's period on the lease table and runs the jobs it won, each in a thread."""

    def __init__(self, engine: sa.Engine, jobs: Iterable[Periodic]) -> None:
        self.engine, self.jobs = engine, {job.name: job for job in jobs}
        self._running: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.owner = lease.new_owner()
        self._beat_at: float | None = None
        shortest = min((job.period_s for job in self.jobs.values()), default=1.0)
        self.tick_s = min(1.0, shortest / 10)

    def claim_due(self, now: datetime | None = None) -> list[tuple[Periodic, str, datetime]]:
        """The jobs whose period this process won just now (none of them running here already), each
        with the owner its claim is held as and the end of its period."""
        now = now or datetime.now(UTC)
        names = [job.lease_name for job in self.jobs.values()]
        with Session(self.engine) as session:
            held = session.exec(select(Lease).where(col(Lease.name).in_(names))).all()
        busy = {row.name for row in held if _aware(row.expires_at) > now}
        won = []
        for job in self.jobs.values():
            if job.lease_name in busy or self._alive(job.name):
                continue
            owner = lease.new_owner()
            until = lease.acquire(self.engine, job.lease_name, owner, job.period_s, now)
            if until is not None:
                log.info(
                    "periodic job %s: claimed at %s, until %s", job.name, now.isoformat(), until.isoformat()
                )
                won.append((job, owner, until))
        return won

    def _alive(self, name: str) -> bool:
        thread = self._running.get(name)
        return thread is not None and thread.is_alive()

    def run_due(self, now: datetime | None = None) -> list[str]:
        """Claim what is due and start each job won in a thread; their names."""
        won = self.claim_due(now)
        for job, owner, period_end in won:
            thread = threading.Thread(
                target=self._run, args=(job, owner, period_end), name=f"periodic {job.name}", daemon=True
            )
            self._running[job.name] = thread
            thread.start()
        return [job.name for job, _, _ in won]

    def _run(self, job: Periodic, owner: str, period_end: datetime) -> None:
        # While it runs, its claim is renewed well ahead (a slow beat must not let a second run in);
        # once done, the claim ends with its period, or at once if the run took longer.
        every_s = min(job.period_s, RUNNING_TTL_S) / 3
        try:
            with lease.Heartbeat(self.engine, job.lease_name, owner, RUNNING_TTL_S, every_s=every_s):
                outcome = job.run()
            log.info("periodic job %s: %s", job.name, outcome)
        except Exception:  # one failed run must not stop the schedule
            log.exception("periodic job %s failed", job.name)
        finally:
            try:
                lease.hold_until(self.engine, job.lease_name, owner, period_end)
            except sa.exc.SQLAlchemyError as exc:  # its claim then ends RUNNING_TTL_S after the last beat
                log.warning("periodic job %s: could not end its claim: %s", job.name, exc)

    # --- the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="periodic scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # the heartbeat then expires by itself
            lease.release(self.engine, _CONSUMER + self.owner, self.owner)

    def beat(self) -> None:
        """Renew this process's heartbeat when it is due."""
        now = time.monotonic()
        if self._beat_at is None or now - self._beat_at >= CONSUMER_BEAT_S:
            lease.acquire(self.engine, _CONSUMER + self.owner, self.owner, CONSUMER_TTL_S)
            self._beat_at = now

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
                self.run_due()
            except sa.exc.SQLAlchemyError as exc:  # the database is down: try again at the next tick
                log.warning("periodic scheduler: %s", exc)
            if self._stopping.wait(self.tick_s):
                return


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite gives naive UTC back
