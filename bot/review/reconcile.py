"""The reconciliation poll: webhooks make reviews fast, this makes them certain."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from bot.forges import ForgeFactory


def reconcile(engine: sa.Engine, forges: ForgeFactory, now: datetime | None = None) -> int:
    """Queue a review (through the outbox) for every open head that has none; how many."""
    raise NotImplementedError  # filled in by the reconciliation work (issue 12)
