"""The audit log in the console: ``/admin/audit`` (the newest entries, of one project or all) and
``GET /api/v1/audit``; ``reviewbot audit list`` shows the same rows the same way (``changes``). The
entries are written by each change itself (``bot.audit.record``); nothing here changes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import AfterValidator, BaseModel
from sqlmodel import Session, col, select

from bot import audit
from bot.console import Console
from bot.console.auth import Actor
from bot.models import AuditEntry, Project

PAGE_LIMIT = 200
MAX_LIMIT = 1000


def utc(when: datetime) -> datetime:
    """A time in UTC, as the console shows every time (SQLite gives naive UTC back)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def as_utc(when: datetime | None) -> datetime | None:
    return None if when is None else utc(when)


UtcDatetime = Annotated[datetime, AfterValidator(utc)]


class AuditOut(BaseModel):
    """One change: who made it, what it changed, the changed values before and after."""

    id: int
    created_at: UtcDatetime
    actor: str
    action: str
    target: str
    project_id: int | None
    before: dict[str, Any]
    after: dict[str, Any]


def changes(entry: AuditEntry | AuditOut) -> list[tuple[str, str, str]]:
    """Each changed key with its value before and after, as JSON (``null``: not set)."""
    keys = dict.fromkeys([*entry.before, *entry.after])
    return [(key, _shown(entry.before.get(key)), _shown(entry.after.get(key))) for key in keys]


def shown(rows: list[AuditEntry]) -> list[AuditOut]:
    return [AuditOut.model_validate(row, from_attributes=True) for row in rows]


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def project_names(console: Console) -> list[tuple[int, str]]:
    """Every project's id and name, for a filter."""
    with Session(console.engine) as session:
        rows = session.exec(select(Project.id, Project.forge, Project.path).order_by(col(Project.path))).all()
    return [(project_id, f"{path} ({forge})") for project_id, forge, path in rows if project_id is not None]


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    page_actor = Depends(console.auth.page_actor)  # before the query's checks: no answer unsigned

    @routes.get("/admin/audit", include_in_schema=False)
    def audit_page(request: Request, actor: Actor = page_actor, project: int | None = None) -> HTMLResponse:
        rows = shown(audit.entries(console.engine, project_id=project, limit=PAGE_LIMIT))
        return console.page(
            request, "audit.html", actor, entries=[(row, changes(row)) for row in rows],
            projects=project_names(console), selected=project, limit=PAGE_LIMIT,
        )  # fmt: skip

    @routes.get(
        "/api/v1/audit", tags=["audit"], summary="The audit log, newest first",
        dependencies=[Depends(console.auth.api_actor)],
    )  # fmt: skip
    def audit_api(
        project: Annotated[int | None, Query(description="Only this project's entries (its id).")] = None,
        since: Annotated[datetime | None, Query(description="Only entries since then (ISO 8601).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many at most.")] = 100,
    ) -> list[AuditOut]:
        """Every change made from the console, its API and the command line: settings, secrets rotated,
        models promoted and rolled back, runs started."""
        return shown(audit.entries(console.engine, project_id=project, since=as_utc(since), limit=limit))

    return routes
