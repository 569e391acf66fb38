"""The audit log: every change an admin makes, written in the transaction of the change itself
(so a change and its entry exist together or not at all), read by the console and ``reviewbot audit
list``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.models import AuditEntry


def record(
    session: Session,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    project_id: int | None = None,
) -> AuditEntry:
    """Add an entry to ``session``; it exists once the caller commits with the change."""
    entry = AuditEntry(actor=actor, action=action, target=target, project_id=project_id,
                       before=before or {}, after=after or {})  # fmt: skip
    session.add(entry)
    return entry


def changed(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the keys whose value changed, on both sides: what an entry shows."""
    keys = [key for key in after if before.get(key) != after.get(key)]
    return {key: before.get(key) for key in keys}, {key: after[key] for key in keys}


def entries(
    engine: sa.Engine, *, project_id: int | None = None, since: datetime | None = None, limit: int = 100
) -> list[AuditEntry]:
    """The newest entries first (of one project, since a date)."""
    query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(limit)
    if project_id is not None:
        query = query.where(col(AuditEntry.project_id) == project_id)
    if since is not None:
        query = query.where(col(AuditEntry.created_at) >= since)
    with Session(engine) as session:
        return list(session.exec(query).all())
