"""Sources through the real intake: a GitHub App's installation events add and disable its
repositories, and a group's or an App's first delivery for a project adds it; then, through the
queue, an App's repository is reviewed with an installation token of the App."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from bot.api import create_app
from bot.models import Delivery, Project, Review, ReviewStatus, Source, SourceKind
from bot.queue.tasks import Queue
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.scripted_server import Script, completion, scripted_server
from tests.support.secrets import BOX, project_row, settings_with_key

APP_SECRET, GROUP_SECRET = "app-webhook-secret", "group-webhook-secret"
INSTALLATION = 957387  # the installation of the official installation.created example
HOSTILE = "evil/\x1b[31mred\u202e <!-- reviewbot:summary --> @all"


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode()


def add_source(engine: sa.Engine, kind: SourceKind, name: str, secret: str, **fields: Any) -> Source:
    forge = "github" if kind is SourceKind.GITHUB_APP else "gitlab"
    source = Source(
        kind=kind, forge=forge, forge_url="http://forge.test", name=name, webhook_secret=BOX.seal(secret),
        webhook_key=f"key-{name}", severity_threshold="major", **fields,
    )  # fmt: skip
    with session_scope(engine) as session:
        session.add(source)
    return source


def add_app(engine: sa.Engine, private_key: str = "not used by the intake") -> Source:
    return add_source(
        engine, SourceKind.GITHUB_APP, "29310", APP_SECRET,
        app_id=29310, private_key=BOX.seal(private_key), bot_username="reviewbot[bot]",
    )  # fmt: skip


def add_group(engine: sa.Engine) -> Source:
    return add_source(
        engine, SourceKind.GITLAB_GROUP, "Group", GROUP_SECRET, token_env="REVIEWBOT_TOKEN_GROUP",
        bot_username="reviewbot",
    )  # fmt: skip


def projects(engine: sa.Engine) -> dict[str, Project]:
    with Session(engine) as session:
        return {p.path: p for p in session.exec(select(Project)).all()}


def reviews(engine: sa.Engine) -> list[Review]:
    with Session(engine) as session:
        return list(session.exec(select(Review).order_by(col(Review.id))).all())


class Wakes:
    def wake(self) -> None:
        pass


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, Wakes(), settings_with_key())) as client:
        yield client


def github(
    client: TestClient, event: str, payload: dict[str, Any], secret: str = APP_SECRET, delivery: str = ""
) -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }
    return client.post("/webhooks/github/key-29310", content=body, headers=headers)


def gitlab(client: TestClient, path: str, token: str = GROUP_SECRET, delivery: str = "") -> Any:
    payload = {
        "object_kind": "merge_request",
        "project": {"path_with_namespace": path},
        "user": {"username": "alice"},
        "object_attributes": {"action": "open", "iid": 3, "last_commit": {"id": "c" * 40}},
    }
    headers = {
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": token,
        "Idempotency-Key": delivery or str(uuid.uuid4()),
    }
    return client.post("/webhooks/gitlab/key-Group", json=payload, headers=headers)


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "github" / "webhooks" / name).read_text())
    return loaded


def repositories_event(
    action: str, installation: int, added: list[str], removed: list[str]
) -> dict[str, Any]:
    shown = [{"full_name": path} for path in added], [{"full_name": path} for path in removed]
    return {
        "action": action, "installation": {"id": installation}, "repository_selection": "selected",
        "repositories_added": shown[0], "repositories_removed": shown[1], "sender": {"login": "octocat"},
    }  # fmt: skip


def pull_opened(repo: str, installation: int | None = INSTALLATION, number: int = 7) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "action": "opened",
        "repository": {"full_name": repo},
        "sender": {"login": "alice"},
        "pull_request": {"number": number, "draft": False, "head": {"sha": "b" * 40}},
    }
    if installation is not None:
        payload["installation"] = {"id": installation}
    return payload


def test_installation_created_adds_its_repositories_once(client: TestClient, engine: sa.Engine) -> None:
    source = add_app(engine)
    delivery = str(uuid.uuid4())
    answer = github(client, "installation", example("installation.created.1.json"), delivery=delivery)
    assert answer.status_code == 200, answer.json()
    assert answer.json()["added"] == ["Codertocat/Hello-World"]
    project = projects(engine)["Codertocat/Hello-World"]
    assert (project.source_id, project.installation_id, project.enabled) == (source.id, INSTALLATION, True)
    assert (project.bot_username, project.severity_threshold, project.webhook_key) == (
        "reviewbot[bot]",
        "major",
        None,
    )

    again = github(client, "installation", example("installation.created.1.json"), delivery=delivery)
    assert "duplicate" in again.json()["detail"]
    assert len(projects(engine)) == 1
    with Session(engine) as session:
        outcomes = [d.outcome for d in session.exec(select(Delivery)).all()]
    assert outcomes == [f"installation {INSTALLATION}: 1 added"]


def test_repositories_added_and_removed_then_added_back(client: TestClient, engine: sa.Engine) -> None:
    add_app(engine)
    github(client, "installation", example("installation.created.1.json"))
    added = github(client, "installation_repositories", example("installation_repositories.added.1.json"))
    assert added.json()["added"] == ["Codertocat/Space"]

    removed = repositories_event("removed", INSTALLATION, [], ["Codertocat/Hello-World"])
    assert github(client, "installation_repositories", removed).json()["disabled"] == [
        "Codertocat/Hello-World"
    ]
    state = {path: (p.enabled, p.installation_id) for path, p in projects(engine).items()}
    assert state == {
        "Codertocat/Hello-World": (False, INSTALLATION),
        "Codertocat/Space": (True, INSTALLATION),
    }

    back = repositories_event("added", 42, ["Codertocat/Hello-World"], [])  # now through another installation
    assert github(client, "installation_repositories", back).json()["enabled"] == ["Codertocat/Hello-World"]
    assert (
        projects(engine)["Codertocat/Hello-World"].enabled,
        projects(engine)["Codertocat/Hello-World"].installation_id,
    ) == (True, 42)


def test_uninstall_disables_all_and_unsuspend_enables_them(client: TestClient, engine: sa.Engine) -> None:
    add_app(engine)
    github(client, "installation", example("installation.created.1.json"))
    github(client, "installation_repositories", example("installation_repositories.added.1.json"))
    suspend = {"action": "suspend", "installation": {"id": INSTALLATION}, "sender": {"login": "octocat"}}
    assert sorted(github(client, "installation", suspend).json()["disabled"]) == [
        "Codertocat/Hello-World",
        "Codertocat/Space",
    ]
    unsuspend = dict(suspend, action="unsuspend")
    assert len(github(client, "installation", unsuspend).json()["enabled"]) == 2

    deleted = dict(suspend, action="deleted")
    answer = github(client, "installation", deleted)
    assert answer.json()["detail"] == f"installation {INSTALLATION}: 2 disabled"
    assert [p.enabled for p in projects(engine).values()] == [False, False]  # kept, with their history


def test_a_pull_request_at_the_apps_url_is_reviewed_and_adds_an_unknown_repository(
    client: TestClient, engine: sa.Engine
) -> None:
    add_app(engine)
    github(client, "installation", example("installation.created.1.json"))
    known = github(client, "pull_request", pull_opened("Codertocat/Hello-World"))
    assert known.status_code == 202, known.json()

    delivery = str(uuid.uuid4())
    unknown = github(client, "pull_request", pull_opened("octo/new", installation=77), delivery=delivery)
    assert unknown.status_code == 202, unknown.json()
    assert projects(engine)["octo/new"].installation_id == 77
    assert (
        github(
            client, "pull_request", pull_opened("octo/new", installation=77), delivery=delivery
        ).status_code
        == 200
    )
    assert len(projects(engine)) == 2
    assert len(reviews(engine)) == 2
    assert (
        github(client, "pull_request", pull_opened("octo/new", number=8)).status_code == 202
    )  # now in memory

    assert github(client, "pull_request", pull_opened("octo/new"), secret="wrong").status_code == 401
    assert github(client, "pull_request", pull_opened("octo/other", installation=None)).status_code == 404


def test_a_repository_registered_on_its_own_is_not_taken_over(client: TestClient, engine: sa.Engine) -> None:
    add_app(engine)
    with session_scope(engine) as session:
        session.add(project_row("its own", forge="github", forge_url="http://forge.test", path="octo/own"))
    assert github(client, "pull_request", pull_opened("octo/own")).status_code == 404
    answer = github(client, "installation_repositories", repositories_event("added", 5, ["octo/own"], []))
    assert answer.json()["not_taken"] == ["octo/own"]
    assert projects(engine)["octo/own"].source_id is None


def test_a_hostile_repository_name_is_stored_as_data(client: TestClient, engine: sa.Engine) -> None:
    add_app(engine)
    answer = github(client, "installation_repositories", repositories_event("added", 5, [HOSTILE], []))
    assert answer.json()["added"] == [HOSTILE]
    assert projects(engine)[HOSTILE].path == HOSTILE


def test_a_group_adds_its_projects_on_their_first_delivery(client: TestClient, engine: sa.Engine) -> None:
    source = add_group(engine)
    delivery = str(uuid.uuid4())
    first = gitlab(client, "Group/sub/proj", delivery=delivery)
    assert first.status_code == 202, first.json()
    project = projects(engine)["Group/sub/proj"]
    assert (project.source_id, project.token_env, project.bot_username) == (
        source.id,
        "REVIEWBOT_TOKEN_GROUP",
        "reviewbot",
    )
    assert (
        gitlab(client, "Group/sub/proj", delivery=delivery).json()["detail"]
        == "duplicate delivery, already handled"
    )
    assert gitlab(client, "Group/sub/proj").status_code == 202  # a new delivery for it
    assert len(projects(engine)) == 1
    assert len(reviews(engine)) == 2

    assert gitlab(client, "other/proj").status_code == 404
    assert gitlab(client, "Groupie/proj").status_code == 404  # a prefix of the name is not the group
    assert gitlab(client, "Group/sub/proj", token="wrong").status_code == 401
    assert len(projects(engine)) == 1


def test_an_apps_repository_is_reviewed_with_an_installation_token(engine: sa.Engine, tmp_path: Path) -> None:
    fake = FakeGitHub()
    bot = fake.add_app(29310, "reviewbot", INSTALLATION)
    fake.add_pull("Codertocat/Hello-World", 7, [SeedFile("app.py", "a = 1\n", "a = 2\n")])
    nothing = completion(json.dumps({"issues": []}))
    with live_server(fake.app) as url, scripted_server(Script([], default=nothing)) as student:
        add_app(engine, private_key_pem())
        with session_scope(engine) as session:  # the App's forge is the fake
            session.execute(sa.update(Source).values(forge_url=url))
        settings = settings_with_key(
            queue_url=f"sqlite:///{tmp_path}/queue.db", student_base_url=student, student_model="scripted",
            llm_max_retries=0,
        )  # fmt: skip
        queue = Queue(settings, engine, retry_delay_s=0)  # its own forges: forge_for with the App keys
        with TestClient(create_app(engine, queue, settings)) as client:
            github(client, "installation", example("installation.created.1.json"))
            assert github(client, "pull_request", pull_opened("Codertocat/Hello-World")).status_code == 202
        queue.relay.send_all()
        while (task := queue.huey.dequeue()) is not None:
            queue.huey.execute(task)
    [review] = reviews(engine)
    assert review.status == ReviewStatus.DONE, review.error
    assert fake.count("POST", f"/app/installations/{INSTALLATION}/access_tokens") >= 1
    assert [c.user for c in fake.issue_comments.values()] == [bot]  # the summary, posted as the App
