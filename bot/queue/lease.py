"""Named leases on the ``lease`` table: a lock with an expiry, held by one owner at a time.

A merge request's review lock (``review:{project}:{mr}``) and the periodic jobs' per-period claims
are leases. The holder renews its lease while it works (``Heartbeat``, every third of the TTL); a
holder that died (SIGKILL, out of memory, a lost host) stops renewing, and once its lease is past
its expiry anyone may take it over. Acquiring is one statement, atomic on SQLite and PostgreSQL:
insert the row, or take it over only when it has expired or is already ours.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bot.models import Lease

log = logging.getLogger(__name__)

_LEASE = Lease.__table__  # type: ignore[attr-defined]  # SQLModel sets it


def new_owner() -> str:
    """A name for one holder: its host and process, and a unique part (threads of one process, and
    each run in a thread, are different holders)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def review_lease(project_id: int, mr_number: int) -> str:
    """The per-merge-request review lock: at most one review of a merge request runs at a time."""
    return f"review:{project_id}:{mr_number}"


def _insert(engine: sa.Engine) -> type[postgresql.Insert] | type[sqlite.Insert]:
    return postgresql.Insert if engine.dialect.name == "postgresql" else sqlite.Insert


def acquire(
    engine: sa.Engine, name: str, owner: str, ttl_s: float, now: datetime | None = None
) -> datetime | None:
    """Take lease ``name`` for ``owner`` until ``now + ttl_s``, if it is free, expired or ours
    already; its new expiry, or None while someone else holds it."""
    now = now or datetime.now(UTC)
    until = now + timedelta(seconds=ttl_s)
    statement = _insert(engine)(_LEASE).values(name=name, owner=owner, expires_at=until)
    statement = statement.on_conflict_do_update(
        index_elements=[_LEASE.c.name],
        set_={"owner": owner, "expires_at": until},
        where=sa.or_(_LEASE.c.expires_at <= now, _LEASE.c.owner == owner),
    )
    with engine.begin() as connection:  # a row comes back when inserted or taken over, none otherwise
        taken = connection.execute(statement.returning(_LEASE.c.name)).first() is not None
    return until if taken else None


def renew(
    engine: sa.Engine, name: str, owner: str, ttl_s: float, now: datetime | None = None
) -> datetime | None:
    """Push ``owner``'s lease to ``now + ttl_s`` (never earlier than it was); its expiry, or None
    when ``owner`` does not hold it any more (released, or taken over after it expired)."""
    now = now or datetime.now(UTC)
    until = now + timedelta(seconds=ttl_s)
    later = sa.case((_LEASE.c.expires_at < until, until), else_=_LEASE.c.expires_at)
    statement = (
        sa.update(_LEASE).where(_LEASE.c.name == name, _LEASE.c.owner == owner).values(expires_at=later)
    )
    with engine.begin() as connection:
        held = connection.execute(statement).rowcount == 1
    return until if held else None


def hold_until(engine: sa.Engine, name: str, owner: str, until: datetime) -> bool:
    """Set ``owner``'s lease to expire at ``until`` exactly, earlier or later; False when it does not
    hold it. A periodic job that ran past its renewals gives back what it did not need."""
    with engine.begin() as connection:
        statement = (
            sa.update(_LEASE).where(_LEASE.c.name == name, _LEASE.c.owner == owner).values(expires_at=until)
        )
        return connection.execute(statement).rowcount == 1


def release(engine: sa.Engine, name: str, owner: str) -> bool:
    """Give ``owner``'s lease back at once; False when it did not hold it."""
    with engine.begin() as connection:
        statement = sa.delete(_LEASE).where(_LEASE.c.name == name, _LEASE.c.owner == owner)
        return connection.execute(statement).rowcount == 1


class Heartbeat:
    """While the ``with`` block runs, a thread renews the lease every ``every_s`` (a third of its TTL
    unless said) and passes each new expiry to ``on_renew``. A renewal that fails (the database is
    down) is logged and tried again at the next beat; ``lost`` is set when it was taken over."""

    def __init__(
        self,
        engine: sa.Engine,
        name: str,
        owner: str,
        ttl_s: float,
        on_renew: Callable[[datetime], None] | None = None,
        every_s: float | None = None,
    ) -> None:
        self.engine, self.name, self.owner, self.ttl_s = engine, name, owner, ttl_s
        self.every_s = every_s if every_s is not None else ttl_s / 3
        self.on_renew = on_renew
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {name}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                until = renew(self.engine, self.name, self.owner, self.ttl_s)
                if until is None:
                    log.warning("lease %s was taken over from %s", self.name, self.owner)
                    self.lost.set()
                    return
                if self.on_renew is not None:
                    self.on_renew(until)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("could not renew lease %s (will try again): %s", self.name, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
