"""The feedback poll against the fake GitHub over real HTTP: one merge request that fails in any way
is logged and skipped, and a reaction on any page of comments is seen."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.feedback.polling import ETags, poll_feedback
from bot.feedback.roles import RoleCache
from bot.forges.base import Forge
from bot.forges.github import GitHubForge
from bot.models import Feedback, Finding, Project, Review
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.live_server import live_server

REPO, BOT = "o/r", "reviewbot"


@dataclass
class World:
    engine: sa.Engine
    fake: FakeGitHub
    comments: dict[int, list[int]]  # pull request -> the bot's comment ids, each a recorded finding

    def forges(self, project: Project) -> Forge:
        return GitHubForge(project.forge_url, project.path, token="bot-token", seconds_between_writes=0)

    def poll(self, etags: ETags, roles: RoleCache) -> int:
        return poll_feedback(self.engine, self.forges, etags, roles, datetime.now(UTC))


def polled(engine: sa.Engine) -> set[tuple[str, str, str]]:
    """(comment id, author, value) of every polled reaction."""
    with Session(engine) as session:
        rows = session.exec(select(Feedback, Finding).join(Finding)).all()
    return {(finding.forge_comment_id or "", row.author, row.value) for row, finding in rows}


def seed(engine: sa.Engine, url: str, fake: FakeGitHub, sizes: dict[int, int]) -> dict[int, list[int]]:
    """Pull requests with ``sizes[number]`` comments of the bot each, all recorded as findings."""
    comments: dict[int, list[int]] = {}
    with session_scope(engine) as session:
        project = Project(forge="github", forge_url=url, path=REPO, webhook_secret="sealed", bot_username=BOT)
        session.add(project)
        session.flush()
        assert project.id is not None
        for number, size in sizes.items():
            fake.add_pull(REPO, number, [SeedFile("a.py", "x\n", "y\n")])
            review = Review(project_id=project.id, mr_number=number, head_sha="b" * 40, status="done",
                            finished_at=datetime.now(UTC))  # fmt: skip
            session.add(review)
            session.flush()
            assert review.id is not None
            comments[number] = []
            for n in range(size):
                body = f"finding {n}\n\n<!-- reviewbot:finding:{number:08x}{n:08x} -->"
                comment = fake.add_review_comment(REPO, number, BOT, body, "a.py")
                comments[number].append(comment)
                session.add(Finding(review_id=review.id, path="a.py", line=1, severity="minor", title="t",
                                    review="r", fingerprint=f"{number:08x}{n:08x}", model_version="base",
                                    forge_comment_id=str(comment)))  # fmt: skip
    return comments


@pytest.fixture
def world(engine: sa.Engine) -> Iterator[World]:
    fake = FakeGitHub()
    fake.add_user(BOT, token="bot-token")
    fake.add_collaborator(REPO, "dev", "write")
    with live_server(fake.app) as url:
        yield World(engine, fake, seed(engine, url, fake, {3: 1, 5: 1, 8: 250}))


def test_a_merge_request_that_fails_oddly_does_not_stop_the_others(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # a proxy answers PR 3's comments with a 200 that is no list: no ForgeError, an error of another kind
    world.fake.fail(f"/repos/{REPO}/pulls/3/comments", 200, message="<html>maintenance</html>")
    world.fake.react(world.comments[3][0], "dev", "+1")
    world.fake.react(world.comments[5][0], "dev", "+1")
    etags: ETags = {}
    with caplog.at_level(logging.ERROR, logger="bot.feedback.polling"):
        assert world.poll(etags, RoleCache()) == 1
    assert polled(world.engine) == {(str(world.comments[5][0]), "dev", "+1")}
    assert "o/r #3" in caplog.text
    assert all(number != 3 for _, number in etags)  # nothing stored for it: all read again next time

    assert world.poll(etags, RoleCache()) == 1  # the proxy is back: PR 3 is polled in full
    assert (str(world.comments[3][0]), "dev", "+1") in polled(world.engine)


def test_a_reaction_on_the_third_page_is_stored(world: World) -> None:
    etags: ETags = {}
    roles = RoleCache()
    assert world.poll(etags, roles) == 0
    late = world.comments[8][230]  # page 3 of 100 comments a page
    world.fake.react(late, "dev", "-1")
    assert world.poll(etags, roles) == 1
    assert polled(world.engine) == {(str(late), "dev", "-1")}
    assert world.poll(etags, roles) == 0  # nothing changed: every page answered 304
