from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot import db
from tests.support.synthetic import review_examples
from tests.support.tiny_model import TinyStudent, build_lora_adapter, build_tiny_student, pretrain
from tests.support.vllm_server import VLLMServer, start_vllm

POSTGRES_URL = os.environ.get(
    "REVIEWBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in _timings.items():
        terminalreporter.write_line(f"{what}: {seconds:.1f} s")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's REVIEWBOT_* variables, .env file or data folder."""
    for name in list(os.environ):
        if name.startswith("REVIEWBOT_") and not name.startswith("REVIEWBOT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REVIEWBOT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reviewbot.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable (start it; see .ci/run): {exc.orig}")
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated database."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> TinyStudent:
    """The tiny student, pre-trained briefly on the review prompts so its answers are short and
    well-formed (a random model tends to answer every find call with an empty list)."""
    started = time.monotonic()
    student = build_tiny_student(tmp_path_factory.mktemp("tiny-student"))
    pretrain(student, review_examples(80), epochs=3)
    _timings["tiny student build and pre-training"] = time.monotonic() - started
    return student


@pytest.fixture(scope="session")
def vllm_server(tiny_student: TinyStudent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """The real vLLM server with the tiny student as ``tiny-student`` and one adapter, ``tiny-lora``."""
    adapter = build_lora_adapter(tiny_student, tmp_path_factory.mktemp("tiny-lora"), seed=1)
    logs = tmp_path_factory.mktemp("vllm-log")
    server = start_vllm(tiny_student.path, "tiny-student", {"tiny-lora": adapter}, logs / "vllm.log")
    _timings["vLLM server start (tiny student, to first /v1/models)"] = server.started_in_s
    yield server
    server.stop()
