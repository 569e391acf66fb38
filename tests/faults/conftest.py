"""The fault suite's fixtures: a ``world`` on each backend, and the one-line count of every test,
printed at the end of the run for the README and the release note."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.faults.world import Tally, World, open_world
from tests.support.processes import Postgres, Redis, postgres, redis_server

_tallies: list[Tally] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _tallies:
        terminalreporter.section("fault injection")
        for tally in _tallies:
            terminalreporter.write_line(tally.line())


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of the suite's own (each test gets a database in it); never the shared one."""
    with postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres-redis", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A migrated database and an empty queue on the backend (SQLite files, or a database in the
    suite's PostgreSQL and a Redis of the test's own), a fake GitLab holding the project, a model
    server, and the project recorded."""
    with ExitStack() as stack:
        server: Postgres | None = None  # the backend's own servers, for a test to stop and start
        redis: Redis | None = None
        if request.param == "sqlite":
            database_url, queue_url = f"sqlite:///{tmp_path / 'bot.db'}", f"sqlite:///{tmp_path / 'queue.db'}"
        else:
            # A test that stops PostgreSQL asks for one of its own (``private_postgres``).
            own = "private_postgres" if "private_postgres" in request.fixturenames else "own_postgres"
            server = request.getfixturevalue(own)
            database_url = server.create_database(f"faults_{uuid.uuid4().hex[:12]}")
            redis = stack.enter_context(redis_server())
            queue_url = redis.url()
        world = stack.enter_context(open_world(request.param, database_url, queue_url, tmp_path / "logs"))
        world.postgres, world.redis = server, redis
        yield world
        _tallies.extend(world.tallies)
