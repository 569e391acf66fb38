"""Engine and schema migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys, and syncs
    the disk at checkpoints rather than at every commit (``synchronous=NORMAL``): a commit survives
    the process being killed, but the last ones may be lost if the machine loses power."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("bot") / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest migration; safe to repeat. Returns (before, after) revisions."""
    with engine.begin() as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_alembic_config(connection), "head")
        after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return before, after


def reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The database's own reason for a failure, in one line."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def schema_revisions(engine: sa.Engine) -> tuple[str | None, str]:
    """(the database's migration revision, None when it has none; the newest this code knows)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head_revision()


def head_revision() -> str:
    with make_engine("sqlite://").connect() as connection:
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    assert head is not None
    return head
