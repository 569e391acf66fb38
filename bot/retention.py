"""What is kept and for how long: ``prune`` removes what no feature needs any more."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa


def prune(engine: sa.Engine, older_than: timedelta) -> dict[str, int]:
    """Remove rows older than ``older_than`` that no feature needs; rows removed, per kind."""
    raise NotImplementedError  # filled in by the retention work (issue 12)
