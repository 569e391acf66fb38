"""The console's health: ``reviewbot doctor``'s checks (``bot.doctor.run_checks``, one row per check
with its fix), how long they took, the jobs waiting in the outbox and the queue's live consumers.

The checks call the forges and model servers (seconds, each with a timeout), so they run in a worker
thread, never on the event loop. Page and ``/api/v1/health`` share ``health_report``; a check's
detail quotes servers' errors and project paths, which the template autoescapes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from bot.config import Settings
from bot.console import Console
from bot.db import reason
from bot.doctor import healthy, run_checks
from bot.models import Outbox
from bot.queue.schedule import CONSUMER_TTL_S, alive_consumers


class CheckRow(BaseModel):
    """One line of ``reviewbot doctor --format json``."""

    check: str
    state: str  # ok, warn, fail, skip
    detail: str
    fix: str


class QueueState(BaseModel):
    unsent: int  # outbox rows not yet moved to the queue
    oldest_unsent_at: datetime | None
    consumers: list[str]  # processes consuming the queue now (their heartbeats)


class HealthReport(BaseModel):
    healthy: bool  # no check failed
    took_s: float  # how long the checks took
    checks: list[CheckRow]
    queue: QueueState | None  # None when the database cannot say
    queue_error: str | None = None


def queue_state(engine: sa.Engine) -> QueueState:
    """The outbox's waiting jobs and the consumers alive now."""
    waiting = col(Outbox.sent_at).is_(None)
    with Session(engine) as session:
        unsent, oldest = session.exec(
            select(func.count(col(Outbox.id)), func.min(col(Outbox.created_at))).where(waiting)
        ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)  # SQLite gives naive UTC back
    return QueueState(unsent=unsent, oldest_unsent_at=oldest, consumers=alive_consumers(engine))


def health_report(settings: Settings, engine: sa.Engine) -> HealthReport:
    """Run the doctor's checks (slow: call it in a thread) and read the queue's state."""
    started = time.monotonic()
    checks = run_checks(settings)
    took = round(time.monotonic() - started, 2)
    rows = [CheckRow(check=c.name, state=c.state.value, detail=c.detail, fix=c.fix) for c in checks]
    try:
        queue, problem = queue_state(engine), None
    except sa.exc.SQLAlchemyError as exc:  # the database check says why, with its fix
        queue, problem = None, reason(exc)
    return HealthReport(healthy=healthy(checks), took_s=took, checks=rows, queue=queue, queue_error=problem)


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    auth = console.auth

    @routes.get("/admin/health", include_in_schema=False)
    async def health_page(request: Request) -> HTMLResponse:
        actor = auth.page_actor(request)
        report = await run_in_threadpool(health_report, console.settings, console.engine)
        return console.page(
            request, "health.html", actor, report=report, now=datetime.now(UTC), beat_s=CONSUMER_TTL_S
        )

    @routes.get("/api/v1/health", tags=["health"], dependencies=[Depends(auth.api_actor)])
    async def get_health() -> HealthReport:
        """``reviewbot doctor``'s checks (configuration, database, queue, models, each project's
        token and webhook, the public URL), how long they took, and the queue's state."""
        return await run_in_threadpool(health_report, console.settings, console.engine)

    return routes
