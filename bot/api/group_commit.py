"""Group commit: one thread writes what concurrent requests hand it, many to a transaction, and
answers each request only once its work is committed.

A transaction's fixed costs (the begin, the commit, its log flush: an fsync per commit on
PostgreSQL, SQLite's writer lock) are paid once per batch instead of once per request, and SQLite's
one writer never makes requests wait on each other's locks. A batch is whatever arrived while the
previous one was being written: nothing waits for a batch to fill, so a lone request is written at
once. Should a batch fail, each of its items is written again in a transaction of its own, so one
bad item fails only its own request. On SQLite the writer's commits never wait on a WAL checkpoint
(see ``_bind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import sqlalchemy as sa
from sqlmodel import Session

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
_Pending = tuple[Item, "asyncio.Future[Result]"]  # an item and the future its request awaits

MAX_BATCH = 128
IDLE_EXIT_S = 5.0  # the thread ends after this long without work (and starts again on the next item)
CHECKPOINT_EVERY_S = 1.0  # SQLite: how often the writer asks for a WAL checkpoint while it writes
SQLITE_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, restored on the writer's connection


class GroupCommit(Generic[Item, Result]):
    """``await submit(item)``: ``write(session, item)`` in the writer thread, committed with the
    others of its batch; then its result. ``after_commit(results)`` runs in the writer thread after
    each commit, before the batch is answered (its errors are logged: the work is committed)."""

    def __init__(
        self,
        engine: sa.Engine,
        write: Callable[[Session, Item], Result],
        after_commit: Callable[[Sequence[Result]], None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.engine, self.write, self.after_commit, self.max_batch = engine, write, after_commit, max_batch
        self._items: queue.SimpleQueue[tuple[Item, asyncio.Future[Result]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._checkpointing = threading.Lock()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._items.put((item, future))  # before the check below: a thread that is ending sees it
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="intake writer", daemon=True)
                self._thread.start()
        return await future

    def _run(self) -> None:
        try:
            with self._bind() as bind:
                self._loop(bind)
        except Exception as exc:  # its connection could not be had: fail what waits, start afresh
            log.exception("intake writer stopped")
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                waiting: list[tuple[asyncio.Future[Result], Result | Exception]] = []
                while not self._items.empty():
                    waiting.append((self._items.get_nowait()[1], exc))
            _settle(waiting)

    def _loop(self, bind: sa.Engine | sa.Connection) -> None:
        checkpointed = time.monotonic()
        while True:
            try:
                first = self._items.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._items.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._items.get_nowait())
                except queue.Empty:
                    break
            self._write(batch, bind)
            if bind is not self.engine and time.monotonic() - checkpointed >= CHECKPOINT_EVERY_S:
                checkpointed = time.monotonic()
                self._checkpoint_soon()

    @contextlib.contextmanager
    def _bind(self) -> Iterator[sa.Engine | sa.Connection]:
        """What batches are written through: on SQLite, a connection of the writer's own whose
        commits never checkpoint the WAL (copying it into the database, with an fsync that a busy
        disk can stretch to a second): ``_checkpoint_soon`` does that in another thread, and no
        request waits on it. Elsewhere, the engine's pool."""
        if self.engine.dialect.name != "sqlite":
            yield self.engine
            return
        with self.engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA wal_autocheckpoint=0")
            try:
                yield connection
            finally:
                raw.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")  # as it came

    def _checkpoint_soon(self) -> None:
        if self._checkpointing.acquire(blocking=False):  # one at a time
            threading.Thread(target=self._checkpoint, name="intake checkpoint", daemon=True).start()

    def _checkpoint(self) -> None:
        try:
            with self.engine.connect() as connection:  # PASSIVE: writers go on meanwhile
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:
            log.warning("intake writer: WAL checkpoint failed (the next one will try again): %s", exc)
        finally:
            self._checkpointing.release()

    def _write(self, batch: list[_Pending[Item, Result]], bind: sa.Engine | sa.Connection) -> None:
        try:
            with Session(bind) as session:
                results = [self.write(session, item) for item, _ in batch]
                session.commit()
        except Exception as exc:
            if len(batch) > 1:  # one bad item fails only its own request
                for one in batch:
                    self._write([one], bind)
            else:
                failed: list[tuple[asyncio.Future[Result], Result | Exception]] = [(batch[0][1], exc)]
                _settle(failed)
            return
        try:
            self.after_commit(results)
        except Exception:
            log.exception("intake writer: after a commit")
        _settle([(future, result) for (_, future), result in zip(batch, results, strict=True)])


def _settle(outcomes: list[tuple[asyncio.Future[Result], Result | Exception]]) -> None:
    """Hand each future its result (or exception) on its own event loop, one wake-up per loop; a
    request gone meanwhile is skipped (its work is committed all the same)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Result], Result | Exception]]] = {}
    for future, outcome in outcomes:
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_set, settled)


def _set(settled: list[tuple[asyncio.Future[Result], Result | Exception]]) -> None:
    for future, outcome in settled:
        if future.done():  # cancelled: the client went away
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
