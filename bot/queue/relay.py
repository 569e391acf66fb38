"""The outbox relay: moves unsent ``outbox`` rows to the queue, in id order, and stamps them sent.

A job is written as an outbox row in the same transaction as what caused it (``bot.outbox.stage``),
so a queue that is down loses nothing: the rows wait. ``wake()`` (the intake calls it after each
commit) has a thread send them at once, many rows per pass; when the queue refuses, the thread
tries again with a growing pause, and the periodic re-send (``send_pending`` from the scheduler)
covers a process that stopped with rows unsent.

A pass claims its rows inside one transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the
one writer's lock), sends them, stamps those sent and commits, so two relays never send the same
row; a crash between sending and committing sends a row again, and every task is idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.events import Signal
from bot.models import Outbox
from bot.outbox import Job, job_of

log = logging.getLogger(__name__)

BATCH = 500  # rows per pass: one transaction, one round of enqueues
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # the thread's pause after the queue refused, doubling
GATHER_S = 0.02  # after a wake, what else commits this soon goes in the same pass (fewer writer locks)

Send = Callable[[Sequence[tuple[Job, tuple[int | Signal, ...]]]], None]  # onto the queue, all or none


class Relay:
    """Sends outbox rows with ``send`` (the queue's enqueue of a batch of jobs)."""

    def __init__(self, engine: sa.Engine, send: Send) -> None:
        self.engine, self.send = engine, send
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def send_pending(self, limit: int = BATCH) -> int:
        """One pass: send up to ``limit`` unsent rows, oldest first, and stamp them; how many. When
        the queue refuses, the error is raised and the rows stay unsent."""
        with Session(self.engine) as session:
            if self.engine.dialect.name == "sqlite":  # take the one writer's lock before reading
                session.execute(sa.update(Outbox).where(sa.false()).values(sent_at=None))
            rows = session.exec(
                select(Outbox)
                .where(col(Outbox.sent_at).is_(None))
                .order_by(col(Outbox.id))
                .limit(limit)
                .with_for_update(skip_locked=True)  # PostgreSQL: two relays take different rows
            ).all()
            if not rows:
                return 0
            self.send([job_of(row) for row in rows])
            sent_at = datetime.now(UTC)
            session.execute(
                sa.update(Outbox).where(col(Outbox.id).in_([row.id for row in rows])).values(sent_at=sent_at)
            )
            session.commit()
        return len(rows)

    def send_all(self) -> int:
        """Passes until no row is left; how many were sent."""
        total = 0
        while (sent := self.send_pending()) > 0:
            total += sent
            if sent < BATCH:
                break
        return total

    def drain(self, timeout_s: float = 10.0) -> None:
        """Send until no row is left unsent, including rows another relay (this one's thread) is
        sending right now; ``TimeoutError`` after ``timeout_s``. What a test calls before it reads
        the queue."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.send_all()
            with Session(self.engine) as session:
                left = session.exec(select(sa.func.count()).where(col(Outbox.sent_at).is_(None))).one()
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} outbox rows still unsent after {timeout_s:.0f} s")
            time.sleep(0.01)

    # --- the thread the intake wakes

    def wake(self) -> None:
        """Rows were committed: send them soon (starts the relay's thread on first use)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="outbox relay", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after its pass (what is unsent stays in the outbox)."""
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        pause = RETRY_FIRST_S
        while True:
            self._wanted.wait()
            if self._stopping.wait(GATHER_S):
                return
            self._wanted.clear()
            try:
                self.send_all()
                pause = RETRY_FIRST_S
            except Exception as exc:  # the queue or the database is down: the rows wait
                log.warning("outbox relay: could not send jobs (will try again in %.1f s): %s", pause, exc)
                if self._stopping.wait(pause):
                    return
                pause = min(pause * 2, RETRY_MAX_S)
                self._wanted.set()
