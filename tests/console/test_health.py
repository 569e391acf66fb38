"""The console's health page and ``/api/v1/health``: ``reviewbot doctor``'s checks (run in a thread,
timed), the jobs waiting in the outbox and the queue's live consumers; check details quote project
paths and servers' errors, which are escaped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from bot.models import Outbox, Project
from bot.queue.schedule import Scheduler
from tests.support.console import bearer, console_client, sign_in
from tests.support.db import session_scope

HOSTILE = "<script>alert(1)</script>"
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused at once


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    """The console on ``engine``'s database, with a student and a public URL that do not answer."""
    settings = {
        "database_url": engine.url.render_as_string(hide_password=False),
        "secret_key": Fernet.generate_key().decode(),
        "student_base_url": f"{DOWN}/v1",
        "public_url": DOWN,
    }
    with console_client(engine, **settings) as client:
        yield client


def seed(engine: sa.Engine) -> None:
    """A project whose token is not set (its path hostile), two jobs waiting and one sent, a live consumer."""
    with session_scope(engine) as session:
        session.add(Project(forge="gitlab", forge_url="http://gitlab.test", path=f"g/{HOSTILE}",
                            webhook_secret="s", token_env="REVIEWBOT_TOKEN_NOT_SET"))  # fmt: skip
        session.add_all([Outbox(task="review", args=[1]), Outbox(task="roles", args=[1]),
                         Outbox(task="review", args=[2], sent_at=datetime.now(UTC))])  # fmt: skip
    Scheduler(engine, []).beat()


def test_the_page_shows_each_check_and_the_queue(engine: sa.Engine, client: TestClient) -> None:
    seed(engine)
    admin = sign_in(client)
    page = admin.client.get("/admin/health")
    assert page.status_code == 200
    html = page.text
    assert "<h1>Health</h1>" in html
    assert '<table id="checks">' in html
    for check in ("configuration", "database", "queue", "student model", "public URL"):
        assert f"<td>{check}</td>" in html
    assert '<tr class="check-fail"><td>student model</td>' in html
    assert "check(s) failed" not in html
    assert "checks failed" in html
    assert " s; reload the page" in html  # how long the checks took
    assert '<dd id="queue-depth">2 (oldest since' in html
    assert html.count("<li><code>") == 1  # one consumer alive
    assert HOSTILE not in html
    assert "<td>gitlab g/&lt;script&gt;alert(1)&lt;/script&gt;: token</td>" in html


def test_the_page_without_consumers_or_jobs(client: TestClient) -> None:
    html = sign_in(client).client.get("/admin/health").text
    assert '<dd id="queue-depth">0</dd>' in html
    assert 'class="empty">none: no worker is taking jobs' in html


def test_the_api_gives_the_doctors_json(engine: sa.Engine, client: TestClient) -> None:
    seed(engine)
    answer = client.get("/api/v1/health", headers=bearer())
    assert answer.status_code == 200
    body = answer.json()
    assert body["healthy"] is False  # the student does not answer
    assert 0 <= body["took_s"] < 60
    checks = {row["check"]: row for row in body["checks"]}
    assert set(checks["database"]) == {"check", "state", "detail", "fix"}
    assert checks["database"]["state"] == "ok"
    assert checks["student model"]["state"] == "fail"
    assert checks["student model"]["fix"]
    assert checks[f"gitlab g/{HOSTILE}: token"]["detail"] == "$REVIEWBOT_TOKEN_NOT_SET is not set"
    queue = body["queue"]
    assert queue["unsent"] == 2
    assert queue["oldest_unsent_at"] is not None
    assert len(queue["consumers"]) == 1
    assert body["queue_error"] is None


def test_the_admin_token_is_needed(client: TestClient) -> None:
    assert client.get("/api/v1/health").status_code == 401
    page = client.get("/admin/health", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/admin/login")
    paths = client.get("/openapi.json", headers=bearer()).json()["paths"]
    assert paths["/api/v1/health"]["get"]["tags"] == ["health"]
