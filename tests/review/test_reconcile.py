"""The reconciliation poll against the fake forges over real HTTP, on SQLite and PostgreSQL: a head
whose webhook was lost is queued once (through the outbox), drafts and the bot's own merge requests
are not, and one failing project does not stop the others."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.forges.base import Forge
from bot.models import Outbox, Project, Review
from bot.outbox import Job, job_of
from bot.review.reconcile import GRACE, reconcile
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fake_gitlab import FakeGitLab, change
from tests.support.live_server import live_server

BOT, TOKEN = "reviewbot", "bot-token"
LATER = GRACE + timedelta(seconds=5)  # a poll this long after a push no longer leaves it to its webhook


@dataclass
class World:
    """One forge (fake, served over HTTP) and its project registered in the database."""

    kind: str
    url: str
    path: str
    open: Callable[..., tuple[int, str]]  # (author=, draft=, state=) -> (number, head)
    push: Callable[[int], str]  # number -> new head
    forges: Callable[[Project], Forge]


@pytest.fixture(params=["gitlab", "github"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    from bot.forges.github import GitHubForge
    from bot.forges.gitlab import GitLabForge

    if request.param == "gitlab":
        lab = FakeGitLab()
        lab.add_user(BOT, TOKEN)
        users = {name: lab.add_user(name, f"{name}-token") for name in ("alice", "bob")} | {
            BOT: next(iter(lab.users.values()))
        }
        project = lab.add_project("group/app")

        def open_gitlab(author: str = "alice", draft: bool = False, state: str = "opened") -> tuple[int, str]:
            changes = [change("app.py", "a = 1\n", "a = 2\n")]
            mr = lab.add_merge_request(project, changes, author=users[author], draft=draft, state=state)
            return mr.iid, mr.sha

        def push_gitlab(number: int) -> str:
            mr = project.merge_requests[number]
            lab.push(mr, [change("app.py", "a = 1\n", f"a = {len(mr.versions) + 2}\n")])
            return mr.sha

        with live_server(lab.app) as url:
            yield World(
                "gitlab", url, "group/app", open_gitlab, push_gitlab,
                lambda p: GitLabForge(p.forge_url, TOKEN, p.path, timeout_s=5),
            )  # fmt: skip
        return
    hub = FakeGitHub()
    hub.add_user(BOT, token=TOKEN)
    repo, numbers = "acme/widgets", iter(range(1, 1000))

    def open_github(author: str = "alice", draft: bool = False, state: str = "opened") -> tuple[int, str]:
        number, files = next(numbers), [SeedFile("app.py", "a = 1\n", "a = 2\n")]
        state = "open" if state == "opened" else state
        pr = hub.add_pull(
            repo, number, files, author=author, head_sha=f"{number:040x}", draft=draft, state=state
        )
        return number, pr.head_sha

    def push_github(number: int) -> str:
        head = f"{number:020x}{int(datetime.now(UTC).timestamp() * 1e6):020x}"
        return hub.push(repo, number, head).head_sha

    with live_server(hub.app) as url:
        yield World(
            "github", url, repo, open_github, push_github,
            lambda p: GitHubForge(p.forge_url, p.path, token=TOKEN, seconds_between_writes=0),
        )  # fmt: skip


def register(engine: sa.Engine, world: World, **fields: Any) -> int:
    with session_scope(engine) as session:
        project = Project(
            forge=world.kind, forge_url=world.url, path=fields.pop("path", world.path),
            webhook_secret="sealed", bot_username=BOT,
            created_at=datetime.now(UTC) - timedelta(days=1), **fields,
        )  # fmt: skip
        session.add(project)
        session.flush()
        assert project.id is not None
        return project.id


def queued_reviews(engine: sa.Engine) -> list[tuple[int, str]]:
    """(mr number, head) of each review the outbox holds a job for, in order."""
    with Session(engine) as session:
        rows = session.exec(select(Outbox).order_by(col(Outbox.id))).all()
        jobs = [job_of(row) for row in rows]
        assert all(job is Job.REVIEW for job, _ in jobs)
        reviews = [session.get(Review, args[0]) for _, args in jobs]
        return [(r.mr_number, r.head_sha) for r in reviews if r is not None]


def test_a_push_whose_webhook_was_lost_is_reviewed_once(engine: sa.Engine, world: World) -> None:
    project_id = register(engine, world)
    number, first_head = world.open()
    with session_scope(engine) as session:  # the opening's webhook arrived: its review is done
        session.add(Review(project_id=project_id, mr_number=number, head_sha=first_head, status="done"))
    assert reconcile(engine, world.forges, datetime.now(UTC) + LATER) == 0
    assert queued_reviews(engine) == []

    head = world.push(number)  # and this push's webhook never arrives
    assert reconcile(engine, world.forges, datetime.now(UTC) + LATER) == 1
    assert queued_reviews(engine) == [(number, head)]
    with Session(engine) as session:
        review = session.exec(select(Review).where(Review.head_sha == head)).one()
        assert review.status == "queued"

    second = datetime.now(UTC) + LATER + timedelta(minutes=5)
    assert reconcile(engine, world.forges, second) == 0  # the next poll finds it has a review
    assert queued_reviews(engine) == [(number, head)]
    with Session(engine) as session:
        reconciled_at = session.get(Project, project_id).reconciled_at  # type: ignore[union-attr]
    assert reconciled_at is not None
    assert abs((reconciled_at.replace(tzinfo=UTC) - second).total_seconds()) < 1


def test_the_intakes_rules_apply(engine: sa.Engine, world: World) -> None:
    register(engine, world)
    reviewed, reviewed_head = world.open()
    world.open(draft=True)
    world.open(author=BOT)  # the bot's own
    world.open(state="closed")
    other, other_head = world.open(author="bob")
    now = datetime.now(UTC) + LATER

    assert reconcile(engine, world.forges, now - LATER) == 0  # all just updated: left to their webhooks
    assert reconcile(engine, world.forges, now) == 2  # the first poll: all open since registration
    assert sorted(queued_reviews(engine)) == sorted([(reviewed, reviewed_head), (other, other_head)])


def test_a_first_poll_looks_back_only_to_the_projects_registration(engine: sa.Engine, world: World) -> None:
    world.open()
    with session_scope(engine) as session:
        session.add(
            Project(forge=world.kind, forge_url=world.url, path=world.path, webhook_secret="sealed",
                    created_at=datetime.now(UTC) + timedelta(hours=1))
        )  # fmt: skip
    # opened long before the bot was set up: no webhook would have reviewed it either
    assert reconcile(engine, world.forges, datetime.now(UTC) + timedelta(hours=1)) == 0


def test_a_failing_project_is_logged_and_skipped(
    engine: sa.Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    broken = register(engine, world, path="nobody/nothing")  # the forge answers 404
    working = register(engine, world)
    register(engine, world, path="off/project", enabled=False)
    number, head = world.open()
    with caplog.at_level(logging.ERROR, logger="bot.review.reconcile"):
        assert reconcile(engine, world.forges, datetime.now(UTC) + LATER) == 1
    assert queued_reviews(engine) == [(number, head)]
    assert "nobody/nothing" in caplog.text
    with Session(engine) as session:
        assert session.get(Project, broken).reconciled_at is None  # type: ignore[union-attr]
        assert session.get(Project, working).reconciled_at is not None  # type: ignore[union-attr]
