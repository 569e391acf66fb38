"""The fault suite's fixtures: a ``world`` on each backend, and the one-line count of every test,
printed at the end of the run for the README and the release note."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from bot import db
from tests.faults.world import BOT_TOKEN, PATH, ReviewingModel, Tally, TimedLog, World
from tests.support.fake_gitlab import FakeGitLab
from tests.support.live_server import live_server
from tests.support.processes import Postgres, postgres, redis_server
from tests.support.scripted_server import scripted_server

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
        if request.param == "sqlite":
            database_url, queue_url = f"sqlite:///{tmp_path / 'bot.db'}", f"sqlite:///{tmp_path / 'queue.db'}"
        else:
            # A test that stops PostgreSQL asks for one of its own (``private_postgres``).
            own = "private_postgres" if "private_postgres" in request.fixturenames else "own_postgres"
            server = request.getfixturevalue(own)
            database_url = server.create_database(f"faults_{uuid.uuid4().hex[:12]}")
            redis = stack.enter_context(redis_server())
            queue_url = redis.url()
        engine = db.make_engine(database_url)
        stack.callback(engine.dispose)
        db.upgrade(engine)
        fake = FakeGitLab()
        fake.add_user("reviewbot", BOT_TOKEN)
        fake.add_user("alice", "alice-token")
        fake.add_project(PATH)
        forge_log = TimedLog(fake.app)
        model = ReviewingModel(replies=[])
        forge_url = stack.enter_context(live_server(forge_log))
        model_url = stack.enter_context(scripted_server(model))
        logs = tmp_path / "logs"
        logs.mkdir()
        world = World(
            request.param, database_url, queue_url, engine, fake, forge_url, forge_log, model, model_url, logs
        )
        if request.param != "sqlite":
            world.postgres, world.redis = server, redis
        world.add_project()
        yield world
        _tallies.extend(world.tallies)
