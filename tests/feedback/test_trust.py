"""Who may teach the model: signals label findings only once their author's role, read from the forge,
is known and high enough; the merge request's author and bots never label; a link ties a comment to
findings of its own merge request only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.api import create_app
from bot.cli import app as cli
from bot.config import load_settings
from bot.events import Role, SignalKind
from bot.feedback.labels import labelled_findings, severity_examples
from bot.feedback.roles import RoleCache, may_label
from bot.forges.gitlab import GitLabForge
from bot.models import Feedback, Finding, Project, Review
from bot.queue import Queue
from tests.feedback.test_capture import KEY, REPO, SEALED_SECRET, github, gitlab, note, pr_comment
from tests.support.db import session_scope

MAINTAINER, DEVELOPER = 40, 30


def row(author: str, role: str, kind: SignalKind = SignalKind.SEVERITY) -> Feedback:
    return Feedback(finding_id=1, kind=kind, value="minor", author=author, role=role, source_event_id="s")


PROJECT = Project(forge="github", forge_url="u", path="o/r", webhook_secret="s", bot_username="reviewbot")

# Whose signal labels a finding of ana's merge request, by default: (the signal, the project's setting).
MAY_LABEL = {
    "a developer": (row("bo", "developer"), {}, True),
    "a maintainer": (row("bo", "maintainer"), {}, True),
    "a reporter": (row("bo", "reporter"), {}, False),
    "anyone on a public repository (guest)": (row("bo", "guest"), {}, False),
    "someone whose role is not known yet": (row("bo", ""), {}, False),
    "the merge request's author": (row("ana", "owner"), {}, False),
    "the author, where the project lets authors label": (row("ana", "owner"), {"author_labels": True}, True),
    "the project's bot": (row("reviewbot", "developer"), {}, False),
    "a GitHub App": (row("ci[bot]", "owner"), {}, False),
    "a developer, where the project wants maintainers": (
        row("bo", "developer"), {"feedback_min_role": "maintainer"}, False
    ),
    "a guest, where the project takes anyone's": (row("bo", "guest"), {"feedback_min_role": "guest"}, True),
    "an addressing push (no author, no role)": (row("", "", SignalKind.ADDRESSED), {}, True),
}  # fmt: skip


@pytest.mark.parametrize(("signal", "setting", "labels"), MAY_LABEL.values(), ids=MAY_LABEL.keys())
def test_who_may_label(signal: Feedback, setting: dict[str, Any], labels: bool) -> None:
    assert may_label(signal, PROJECT.model_copy(update=setting), "ana") is labels


def test_roles_are_cached_for_a_few_minutes() -> None:
    now = [0.0]
    asked: list[str] = []
    cache = RoleCache(ttl_s=300, clock=lambda: now[0])

    def lookup(username: str) -> Role:
        asked.append(username)
        return Role.DEVELOPER

    for at in (0, 299, 301):
        now[0] = at
        assert cache.role(1, "ana", lookup) is Role.DEVELOPER
    assert cache.role(2, "ana", lookup) is Role.DEVELOPER  # per project
    assert asked == ["ana", "ana", "ana"]


@dataclass
class Critical:
    """Merge request 1 of group/app on a fake GitLab, by ana: one critical SQL-injection finding of
    the bot's; mo maintains the project, dev develops in its group, gus is a guest."""

    engine: sa.Engine
    client: TestClient
    queue: Queue
    fake: Any
    discussion: str
    project: Any  # the fake's project

    def command(self, text: str, user: str, note_id: int) -> None:
        response = gitlab(self.client, "Note Hook", note(text, self.discussion, note_id=note_id, user=user))
        assert response.status_code == 200, response.json()

    def run_jobs(self) -> None:
        self.queue.relay.drain()  # the outbox's jobs onto the queue
        while (task := self.queue.huey.dequeue()) is not None:
            self.queue.huey.execute(task)

    def exported(self) -> list[dict[str, Any]]:
        return [e["answer"] for e in severity_examples(labelled_findings(self.engine))]

    def roles(self) -> list[tuple[str, str]]:
        with Session(self.engine) as session:
            return [(r.author, r.role) for r in session.exec(select(Feedback).order_by(Feedback.id)).all()]


@pytest.fixture
def critical(engine: sa.Engine, tmp_path: Path) -> Iterator[Critical]:
    from tests.support.fake_gitlab import FakeGitLab, change
    from tests.support.live_server import live_server

    fake = FakeGitLab()
    bot = fake.add_user("reviewbot", "bot-token")
    project = fake.add_project("group/app")
    ana = fake.add_member(project, fake.add_user("ana", "ana-token"), DEVELOPER)
    fake.add_member(project, fake.add_user("mo", "mo-token"), MAINTAINER)
    fake.add_member(project, fake.add_user("dev", "dev-token"), DEVELOPER, inherited=True)
    fake.add_member(project, fake.add_user("gus", "gus-token"), 10)
    mr = fake.add_merge_request(project, [change("db.py", "x\n", "y\n")], author=ana)
    ours = fake.add_note(mr, bot, "**critical** · SQL injection", resolvable=True)
    discussion = mr.discussions[-1].id
    with live_server(fake.app) as url:
        with session_scope(engine) as session:
            row = Project(forge="gitlab", forge_url=url, path="group/app", webhook_secret=SEALED_SECRET,
                          bot_username="reviewbot")  # fmt: skip
            session.add(row)
            session.flush()
            review = Review(project_id=row.id, mr_number=mr.iid, head_sha=mr.sha, status="done",
                            finished_at=datetime.now(UTC), mr_author="ana")  # fmt: skip
            session.add(review)
            session.flush()
            session.add(Finding(review_id=review.id, path="db.py", line=1, severity="critical",
                                title="SQL injection", review="r", fingerprint="f" * 16, model_version="base",
                                forge_comment_id=str(ours.id), forge_thread_id=discussion))  # fmt: skip
        settings = load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db")
        queue = Queue(settings, engine, lambda p: GitLabForge(url, "bot-token", p.path), retry_delay_s=0)
        with TestClient(create_app(engine, queue, settings)) as client:
            yield Critical(engine, client, queue, fake, discussion, project)


def test_the_authors_own_correction_labels_nothing(critical: Critical) -> None:
    critical.command("/severity trivial it is only a test", "ana", 901)
    critical.run_jobs()
    assert critical.roles() == [("ana", "developer")]  # recorded, with the role ...
    assert critical.exported() == []  # ... but the author does not label their own code


def test_a_guests_correction_labels_nothing(critical: Critical) -> None:
    critical.command("/severity trivial", "gus", 902)
    critical.run_jobs()
    assert critical.roles() == [("gus", "guest")]
    assert critical.exported() == []


def test_a_signal_whose_role_is_not_known_yet_labels_nothing(critical: Critical) -> None:
    critical.command("/severity major", "mo", 903)
    assert critical.roles() == [("mo", "")]  # the intake never waits on the forge ...
    assert critical.exported() == []
    critical.run_jobs()  # ... a queue job reads the role
    assert critical.exported() == [{"issue_type": "major"}]


def test_a_maintainers_correction_outranks_a_developers(critical: Critical) -> None:
    critical.command("/severity trivial", "dev", 904)  # dev: a developer through the project's group
    critical.command("/severity critical right, it is exploitable", "mo", 905)
    critical.run_jobs()
    assert critical.roles() == [("dev", "developer"), ("mo", "maintainer")]
    assert critical.exported() == [{"issue_type": "critical"}]


def test_a_project_may_let_authors_label(critical: Critical) -> None:
    with session_scope(critical.engine) as session:
        session.exec(select(Project)).one().author_labels = True
    critical.command("/severity minor", "ana", 906)
    critical.run_jobs()
    assert critical.exported() == [{"issue_type": "minor"}]


def test_the_role_job_retries_a_failing_forge(critical: Critical) -> None:
    critical.fake.fail("GET", "/members/all/", 502, times=3)  # python-gitlab retries twice itself
    critical.command("/severity major", "mo", 907)
    critical.run_jobs()
    assert critical.roles() == [("mo", "maintainer")]


@pytest.fixture
def two_pull_requests(engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[TestClient, Queue, int]]:
    """Pull requests 1 and 2 of REPO; the bot's finding on PR 1 (review comment 7001)."""
    from bot.forges.github import GitHubForge
    from tests.support.fake_github import FakeGitHub, SeedFile
    from tests.support.live_server import live_server

    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    fake.add_collaborator(REPO, "ana", "admin")
    for number in (1, 2):
        fake.add_pull(REPO, number, [SeedFile("a.py", "x\n", "y\n")])
    with live_server(fake.app) as url:
        with session_scope(engine) as session:
            project = Project(forge="github", forge_url=url, path=REPO, webhook_secret=SEALED_SECRET,
                              bot_username="reviewbot")  # fmt: skip
            session.add(project)
            session.flush()
            for number in (1, 2):
                review = Review(project_id=project.id, mr_number=number, head_sha="b" * 40, status="done",
                                finished_at=datetime.now(UTC))  # fmt: skip
                session.add(review)
                session.flush()
                if number == 1:
                    session.add(Finding(review_id=review.id, path="a.py", line=1, severity="critical",
                                        title="t", review="r", fingerprint="f" * 16, model_version="base",
                                        forge_comment_id="7001"))  # fmt: skip
        settings = load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db")
        queue = Queue(
            settings, engine, lambda p: GitHubForge(url, p.path, token="bot-token"), retry_delay_s=0
        )
        with TestClient(create_app(engine, queue, settings)) as client:
            yield client, queue, 0


def test_a_link_to_a_finding_of_another_pull_request_labels_nothing(
    two_pull_requests: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, queue, _ = two_pull_requests
    link = f"https://github.com/{REPO}/pull/1#discussion_r7001"
    on_pr_2 = pr_comment(950, f"/severity trivial\n\n{link}")
    on_pr_2["issue"]["number"] = 2
    assert github(client, "issue_comment", on_pr_2).status_code == 202  # waits for a finding of PR 2 ...
    queue.relay.drain()  # the outbox's jobs onto the queue
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
    with Session(engine) as session:
        assert session.exec(select(Feedback)).all() == []  # ... and none comes
    on_pr_1 = pr_comment(951, f"/severity trivial\n\n{link}")
    assert github(client, "issue_comment", on_pr_1).status_code == 200  # the same link, on PR 1


def test_feedback_list_shows_each_signals_role_and_whether_it_counts(
    critical: Critical, engine: sa.Engine
) -> None:
    critical.command("/severity trivial", "ana", 908)
    critical.command("/severity major", "mo", 909)
    critical.run_jobs()
    env = {
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "REVIEWBOT_SECRET_KEY": KEY,
    }
    listed = CliRunner().invoke(cli, ["feedback", "list", "--format", "json"], env=env)
    assert listed.exit_code == 0, listed.output
    signals = json.loads(listed.stdout)[0]["signals"]
    assert [(s["author"], s["role"], s["labels"]) for s in signals] == [
        ("ana", "developer", False),
        ("mo", "maintainer", True),
    ]


@pytest.mark.usefixtures("critical")
def test_project_set_changes_whose_feedback_labels(engine: sa.Engine) -> None:
    env = {
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "REVIEWBOT_SECRET_KEY": KEY,
    }
    runner = CliRunner()
    done = runner.invoke(
        cli, ["project", "set", "group/app", "--feedback-min-role", "maintain", "--author-labels"], env=env
    )
    assert done.exit_code == 0, done.output
    assert "labels by maintainer and above, the author too" in done.stdout
    with Session(engine) as session:
        project = session.exec(select(Project)).one()
        assert (project.feedback_min_role, project.author_labels) == ("maintainer", True)
    wrong = runner.invoke(cli, ["project", "set", "group/app", "--feedback-min-role", "boss"], env=env)
    assert wrong.exit_code == 2
    assert "no role 'boss'" in wrong.output
    back = runner.invoke(cli, ["project", "set", "group/app", "--feedback-min-role", "default"], env=env)
    assert "labels by developer and above" in back.stdout
