"""Every official payload through the real app: signatures, dedupe, routing; rejected ones store nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, func, select

from bot.api import create_app
from bot.api.webhooks import MAX_BODY_BYTES
from bot.events import Signal
from bot.forges import github_events, gitlab_events
from bot.models import Delivery, Outbox, Project, Review
from bot.outbox import Job, job_of
from tests.support.db import session_scope
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.secrets import project_row, settings_with_key

assert FIXTURES.is_dir(), f"the forges' payload examples are missing: expected them in {FIXTURES}"
GITHUB = sorted((FIXTURES / "github" / "webhooks").glob("*.json"))
GITLAB = sorted((FIXTURES / "gitlab" / "webhooks").glob("*.json"))
REVIEW_ACTIONS = {"opened", "reopened", "synchronize", "ready_for_review"}
GITLAB_EVENTS = {"merge_request": "Merge Request Hook", "note": "Note Hook", "emoji": "Emoji Hook"}
SECRET = "s3cret-webhook"


class Wakes:
    """Stands in for the queue's relay: how often the intake said that jobs were committed."""

    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


@pytest.fixture
def app(engine: sa.Engine) -> Iterator[tuple[TestClient, Wakes]]:
    wakes = Wakes()
    with TestClient(create_app(engine, wakes, settings_with_key())) as client:
        yield client, wakes


def staged(engine: sa.Engine, job: Job | None = None) -> list[tuple[int | Signal, ...]]:
    """The arguments of the jobs the intake wrote to the outbox (of one kind), oldest first."""
    with Session(engine) as session:
        rows = session.exec(select(Outbox).order_by(col(Outbox.id))).all()
    return [args for kind, args in map(job_of, rows) if job is None or kind is job]


def add_project(engine: sa.Engine, forge: str, path: str, secret: str = SECRET, **extra: Any) -> None:
    with session_scope(engine) as session:
        session.add(project_row(secret, forge=forge, forge_url="http://forge.test", path=path, **extra))


def count(engine: sa.Engine, table: type[Any]) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def github_headers(
    body: bytes, event: str, secret: str = SECRET, delivery: str | None = None
) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


def gitlab_headers(event: str, token: str = SECRET, delivery: str | None = None) -> dict[str, str]:
    return {
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": token,
        "Idempotency-Key": delivery or str(uuid.uuid4()),
        "Content-Type": "application/json",
    }


def github_case(path: Path) -> tuple[bytes, str, str, int]:
    body = path.read_bytes()
    event, action = path.name.split(".")[:2]
    payload = json.loads(body)
    repo = payload.get("repository", {}).get("full_name", "")
    expected = 202 if event == "pull_request" and action in REVIEW_ACTIONS else 200
    if event == "pull_request_review_thread":
        expected = 202  # feedback on a thread; no finding is known, so it waits in the queue
    return body, event, repo, expected


@pytest.mark.parametrize("path", GITHUB, ids=lambda p: p.name)
def test_github_fixture_through_the_app(path: Path, app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, wakes = app
    body, event, repo, expected = github_case(path)
    if not repo:  # installation events name no repository: no project can claim them
        add_project(engine, "github", "someone/else")
        response = client.post("/webhooks/github", content=body, headers=github_headers(body, event))
        assert response.status_code == 404
        return
    add_project(engine, "github", repo)

    for wrong in (github_headers(body, event, secret="wrong"), {"X-GitHub-Event": event}):
        assert client.post("/webhooks/github", content=body, headers=wrong).status_code == 401
    assert count(engine, Delivery) == 0  # rejected deliveries leave nothing behind

    headers = github_headers(body, event)
    first = client.post("/webhooks/github", content=body, headers=headers)
    assert first.status_code == expected, first.json()
    assert len(staged(engine)) == wakes.count == (1 if expected == 202 else 0)
    again = client.post("/webhooks/github", content=body, headers=headers)
    assert again.status_code == 200
    assert "duplicate" in again.json()["detail"]
    assert len(staged(engine)) == wakes.count == (1 if expected == 202 else 0)
    assert count(engine, Delivery) == 1
    assert count(engine, Review) == len(staged(engine, Job.REVIEW))


@pytest.mark.parametrize("path", GITLAB, ids=lambda p: p.name)
def test_gitlab_fixture_through_the_app(path: Path, app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, wakes = app
    body = path.read_bytes()
    payload = json.loads(body)
    event = GITLAB_EVENTS[payload["object_kind"]]
    add_project(engine, "gitlab", payload["project"]["path_with_namespace"])
    expected = 202 if payload["object_kind"] == "merge_request" else 200  # the MR fixture is an "open"

    wrong = gitlab_headers(event, token="wrong")
    assert client.post("/webhooks/gitlab", content=body, headers=wrong).status_code == 401
    no_token = {"X-Gitlab-Event": event}
    assert client.post("/webhooks/gitlab", content=body, headers=no_token).status_code == 401
    assert count(engine, Delivery) == 0

    headers = gitlab_headers(event)
    assert client.post("/webhooks/gitlab", content=body, headers=headers).status_code == expected
    again = client.post("/webhooks/gitlab", content=body, headers=headers)
    assert again.status_code == 200
    assert "duplicate" in again.json()["detail"]
    queued = 1 if expected == 202 else 0
    assert len(staged(engine, Job.REVIEW)) == wakes.count == queued == count(engine, Review)


def test_queued_review_row_holds_the_merge_request(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    body, event, repo, _ = github_case(FIXTURES / "github" / "webhooks" / "pull_request.synchronize.1.json")
    add_project(engine, "github", repo)
    response = client.post("/webhooks/github", content=body, headers=github_headers(body, event))
    assert response.status_code == 202
    assert staged(engine) == [(response.json()["review_id"],)]
    with Session(engine) as session:
        review = session.get(Review, response.json()["review_id"])
    payload = json.loads(body)
    assert review is not None
    assert review.status == "queued"
    assert (review.mr_number, review.head_sha) == (payload["number"], payload["pull_request"]["head"]["sha"])


def test_malformed_body_with_valid_signature_is_400(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    add_project(engine, "github", "Codertocat/Hello-World")
    for body in (b'{"action": "opened", ', b"[1, 2]", b"\xff\xfe"):
        response = client.post("/webhooks/github", content=body, headers=github_headers(body, "pull_request"))
        assert response.status_code == 400, body
        assert "malformed" in response.json()["detail"]
    assert count(engine, Delivery) == 0


def test_oversized_body_is_413_before_anything_else(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    add_project(engine, "gitlab", "group/app")
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    response = client.post("/webhooks/gitlab", content=body, headers=gitlab_headers("Merge Request Hook"))
    assert response.status_code == 413
    assert count(engine, Delivery) == 0


def test_unknown_project_is_404(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    body, event, _, _ = github_case(FIXTURES / "github" / "webhooks" / "pull_request.opened.1.json")
    assert (
        client.post("/webhooks/github", content=body, headers=github_headers(body, event)).status_code == 404
    )
    add_project(engine, "github", "other/repo")  # same secret, different repository
    response = client.post("/webhooks/github", content=body, headers=github_headers(body, event))
    assert response.status_code == 404
    assert "Codertocat/Hello-World" in response.json()["detail"]
    assert count(engine, Delivery) == 0


def test_events_of_the_bot_itself_and_disabled_projects_are_ignored(
    app: tuple[TestClient, Wakes], engine: sa.Engine
) -> None:
    client, wakes = app
    body, event, repo, _ = github_case(FIXTURES / "github" / "webhooks" / "pull_request.opened.1.json")
    add_project(engine, "github", repo, bot_username="Codertocat")
    response = client.post("/webhooks/github", content=body, headers=github_headers(body, event))
    assert response.status_code == 200
    assert "bot itself" in response.json()["detail"]
    with session_scope(engine) as session:
        project = session.exec(select(Project)).one()
        project.bot_username, project.enabled = "reviewbot", False
    response = client.post("/webhooks/github", content=body, headers=github_headers(body, event))
    assert response.status_code == 200
    assert "disabled" in response.json()["detail"]
    assert staged(engine) == []
    assert wakes.count == 0


def test_each_project_answers_to_its_own_secret(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    add_project(engine, "github", "a/one")
    with session_scope(engine) as session:
        session.add(project_row("other", forge="github", forge_url="http://forge.test", path="b/two"))
    payload = json.loads((FIXTURES / "github" / "webhooks" / "pull_request.opened.1.json").read_bytes())
    payload["repository"]["full_name"] = "b/two"
    body = json.dumps(payload).encode()
    assert (
        client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "pull_request")
        ).status_code
        == 404
    )
    headers = github_headers(body, "pull_request", secret="other")
    assert client.post("/webhooks/github", content=body, headers=headers).status_code == 202
    assert len(staged(engine, Job.REVIEW)) == 1


def pr_comment(body: str, action: str = "created", repo: str = "o/r") -> dict[str, Any]:
    """The official issue_comment example, moved onto pull request 7 of ``repo``."""
    payload: dict[str, Any] = json.loads(
        (FIXTURES / "github" / "webhooks" / "issue_comment.created.1.json").read_bytes()
    )
    payload["action"] = action
    payload["repository"]["full_name"] = repo
    payload["issue"]["number"] = 7
    payload["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{repo}/pulls/7"}
    payload["comment"].update(id=55, body=body)
    return payload


@pytest.mark.parametrize(
    ("body", "comment_id"),
    [
        ("/severity minor\nhttps://github.com/o/r/pull/7#discussion_r123", "123"),
        ("about https://github.com/O/R/pull/7/files#r123: not an issue", "123"),  # the files view's link
        ("/dismiss https://ghe.example.com/o/r/pull/3#issuecomment-99", "issuecomment-99"),
        (
            "twice https://github.com/o/r/pull/7#discussion_r123 and github.com/o/r/pull/7#discussion_r123",
            "123",
        ),
    ],
)
def test_a_pull_request_comment_linking_a_comment_is_tied_to_it(body: str, comment_id: str) -> None:
    route = github_events.parse({"x-github-event": "issue_comment"}, pr_comment(body))
    assert route.signal is not None
    assert route.ignored is None
    assert (route.signal.comment_id, route.signal.reply_id) == (comment_id, "issuecomment-55")
    assert route.signal.source_event_id == "github:issuecomment:55"
    assert route.signal.quote is None


def test_a_pull_request_comment_quoting_is_tied_by_its_quote() -> None:
    body = "> **major** · Leak\n>\n> The handle is never closed.\n>> nested\n\n/severity minor closed by GC"
    route = github_events.parse({"x-github-event": "issue_comment"}, pr_comment(body))
    signal = route.signal
    assert signal is not None
    assert signal.comment_id is None
    assert signal.mr_number == 7
    assert signal.quote == "**major** · Leak\nThe handle is never closed.\nnested"
    assert (signal.kind, signal.value) == ("severity", "minor")
    deleted = github_events.parse(
        {"x-github-event": "issue_comment"}, pr_comment(body, action="deleted")
    ).signal
    assert deleted is not None
    assert (deleted.kind, deleted.value, deleted.quote) == ("reply", "", signal.quote)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (
            json.loads((FIXTURES / "github" / "webhooks" / "issue_comment.created.1.json").read_bytes()),
            "not a pull request",
        ),
        (pr_comment("LGTM, merging"), "neither links nor quotes"),
        (pr_comment("see https://github.com/other/repo/pull/7#discussion_r123"), "neither links nor quotes"),
        (
            pr_comment(
                "https://github.com/o/r/pull/7#discussion_r1 https://github.com/o/r/pull/7#discussion_r2"
            ),
            "links 2",
        ),
        (pr_comment("x\n\n<!-- reviewbot:summary -->"), "bot's own"),
        (pr_comment("> quoted", action="pinned"), "not feedback"),
    ],
)
def test_other_pull_request_comments_are_ignored(payload: dict[str, Any], why: str) -> None:
    route = github_events.parse({"x-github-event": "issue_comment"}, payload)
    assert route.signal is None
    assert route.ignored is not None
    assert why in route.ignored


@pytest.mark.parametrize(
    ("action", "draft", "closed", "reviewed"),
    [("close", False, True, False), ("merge", False, True, False), ("close", True, True, False),
     ("reopen", False, False, True), ("reopen", True, False, False), ("update", False, None, True)],
)  # fmt: skip
def test_gitlab_merge_request_closes_and_reopens(
    action: str, draft: bool, closed: bool | None, reviewed: bool
) -> None:
    payload = json.loads((FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json").read_bytes())
    payload["object_attributes"].update(action=action, draft=draft)
    route = gitlab_events.parse({"x-gitlab-event": "Merge Request Hook"}, payload)
    assert route.closed is closed
    assert (route.head_sha is not None) is reviewed
    assert route.number == payload["object_attributes"]["iid"]  # a push (the example has oldrev) is reviewed


@pytest.mark.parametrize(("name", "closed"), [("closed.1", True), ("closed.2", True), ("reopened.1", False)])
def test_github_pull_request_closes_and_reopens(name: str, closed: bool) -> None:
    payload = json.loads((FIXTURES / "github" / "webhooks" / f"pull_request.{name}.json").read_bytes())
    route = github_events.parse({"x-github-event": "pull_request"}, payload)
    assert (route.number, route.closed, route.ignored) == (payload["number"], closed, None)
    assert (route.head_sha is None) is closed  # a close starts no review; a reopening does


def opened_for(repo: str) -> bytes:
    payload = json.loads((FIXTURES / "github" / "webhooks" / "pull_request.opened.1.json").read_bytes())
    payload["repository"]["full_name"] = repo
    return json.dumps(payload).encode()


def webhook_key(engine: sa.Engine, path: str) -> str:
    with Session(engine) as session:
        project = session.exec(select(Project).where(Project.path == path)).one()
    assert project.webhook_key is not None
    return project.webhook_key


def test_a_projects_own_url_answers_to_its_own_secret_only(
    app: tuple[TestClient, Wakes], engine: sa.Engine
) -> None:
    client, _ = app
    add_project(engine, "github", "a/one", webhook_key="key-one")
    add_project(engine, "github", "b/two", secret="other", webhook_key="key-two")
    body = opened_for("a/one")
    wrong = github_headers(body, "pull_request", secret="other")  # b/two's secret, on a/one's URL
    assert client.post("/webhooks/github/key-one", content=body, headers=wrong).status_code == 401
    unknown = client.post(
        "/webhooks/github/no-such-key", content=body, headers=github_headers(body, "pull_request")
    )
    assert unknown.status_code == 404
    elsewhere = client.post(
        "/webhooks/github/key-two", content=body, headers=wrong
    )  # b/two's URL, a/one named
    assert elsewhere.status_code == 404
    right = client.post(
        "/webhooks/github/key-one", content=body, headers=github_headers(body, "pull_request")
    )
    assert right.status_code == 202, right.json()
    assert len(staged(engine, Job.REVIEW)) == 1
    assert count(engine, Delivery) == 1
    assert client.get("/webhooks/github/key-one").status_code == 405  # deliveries are POSTs


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_projects_sharing_one_secret_each_get_their_deliveries(
    app: tuple[TestClient, Wakes], engine: sa.Engine, forge: str
) -> None:
    """A GitHub App or organisation hook, a GitLab group hook: one secret signs all their deliveries."""
    client, _ = app
    for path in ("org/one", "org/two"):
        add_project(engine, forge, path)
    for path in ("org/one", "org/two"):
        if forge == "github":
            body = opened_for(path)
            headers = github_headers(body, "pull_request")
        else:
            payload = json.loads((FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json").read_bytes())
            payload["project"]["path_with_namespace"] = path
            body, headers = json.dumps(payload).encode(), gitlab_headers("Merge Request Hook")
        response = client.post(f"/webhooks/{forge}", content=body, headers=headers)
        assert response.status_code == 202, (path, response.json())
    assert len(staged(engine, Job.REVIEW)) == 2
    with Session(engine) as session:
        reviewed = {review.project_id for review in session.exec(select(Review)).all()}
    assert len(reviewed) == 2


def test_a_project_added_after_the_start_is_found(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    client, _ = app
    body = opened_for("late/comer")
    assert (
        client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "pull_request")
        ).status_code
        == 404
    )
    add_project(engine, "github", "late/comer")
    assert (
        client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "pull_request")
        ).status_code
        == 202
    )


@pytest.mark.parametrize("stored", ["empty", "plain text"])
def test_a_project_without_a_sealed_secret_never_authenticates(
    app: tuple[TestClient, Wakes], engine: sa.Engine, stored: str
) -> None:
    client, wakes = app
    payload = json.loads((FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json").read_bytes())
    path = payload["project"]["path_with_namespace"]
    with session_scope(engine) as session:
        if stored == "empty":
            session.add(
                project_row("", forge="gitlab", forge_url="http://forge.test", path=path, webhook_key="k")
            )
        else:
            session.add(
                Project(forge="gitlab", forge_url="http://forge.test", path=path, webhook_secret=SECRET)
            )
    body = json.dumps(payload).encode()
    token = "" if stored == "empty" else SECRET
    for url in ("/webhooks/gitlab", "/webhooks/gitlab/k"):
        headers = gitlab_headers("Merge Request Hook", token=token)
        assert client.post(url, content=body, headers=headers).status_code in (401, 404)
        no_token = {"X-Gitlab-Event": "Merge Request Hook"}
        assert client.post(url, content=body, headers=no_token).status_code == 401
    assert staged(engine) == []
    assert wakes.count == 0
    assert count(engine, Delivery) == 0


def test_no_database_query_before_authentication(app: tuple[TestClient, Wakes], engine: sa.Engine) -> None:
    """Unsigned junk costs no query; wrongly signed junk costs at most the rate-limited reloads."""
    client, _ = app
    add_project(engine, "github", "a/one", webhook_key="key-one")
    body = opened_for("a/one")
    assert (
        client.post(
            "/webhooks/github", content=body, headers=github_headers(body, "pull_request")
        ).status_code
        == 202
    )
    queries: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    unsigned = {"X-GitHub-Event": "pull_request", "Content-Type": "application/json"}
    for url in ("/webhooks/github", "/webhooks/github/key-one", "/webhooks/github/unknown"):
        for _ in range(20):
            assert client.post(url, content=body, headers=unsigned).status_code == 401
    assert queries == []
    for _ in range(40):
        wrong = github_headers(body, "pull_request", secret="guess")
        assert client.post("/webhooks/github", content=body, headers=wrong).status_code == 401
    # the reloads' burst (10), and at most one a second after it; each reads projects and sources
    assert 0 < len(queries) <= 2 * 12


def test_too_many_deliveries_at_once_are_503_with_retry_after(engine: sa.Engine) -> None:
    release = threading.Event()

    class Slow(Wakes):
        def wake(self) -> None:  # holds the first delivery in flight, after its commit
            release.wait(timeout=30)
            super().wake()

    add_project(engine, "github", "a/one")
    wakes = Slow()
    app = create_app(engine, wakes, settings_with_key(intake_concurrency=1))
    with live_server(app) as url:
        first_body = opened_for("a/one")
        first = threading.Thread(
            target=httpx.post,
            args=(f"{url}/webhooks/github",),
            kwargs={
                "content": first_body,
                "headers": github_headers(first_body, "pull_request"),
                "timeout": 30,
            },
        )
        first.start()
        deadline = 100
        while count(engine, Review) == 0 and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        second = httpx.post(
            f"{url}/webhooks/github", content=first_body, headers=github_headers(first_body, "pull_request")
        )
        release.set()
        first.join(timeout=30)
    assert second.status_code == 503
    assert second.headers["retry-after"].isdigit()
    assert wakes.count == 1
    assert len(staged(engine, Job.REVIEW)) == 1


def test_docs_schema_and_metrics_need_the_admin_token(engine: sa.Engine) -> None:
    with TestClient(create_app(engine, Wakes(), settings_with_key())) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert client.get(path).status_code in (403, 404), path
        assert client.get("/healthz").status_code == 200
    with TestClient(create_app(engine, Wakes(), settings_with_key(admin_token="t0ken"))) as client:
        for path in ("/openapi.json", "/metrics"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert client.get(path, headers={"Authorization": "t0ken"}).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer t0ken"}).status_code == 200
        assert client.get("/docs").status_code == 404
    with TestClient(create_app(engine, Wakes(), settings_with_key(public_metrics=True))) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 403
