"""Reviewers' reactions arriving by webhook become feedback rows on the right finding — once each,
updated on revoke or edit — and a reaction that outruns its finding waits in the queue."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot import db
from bot.app import create_app
from bot.config import load_settings
from bot.feedback import LabelState, labelled_findings
from bot.models import Delivery, Feedback, Finding, Project, Review
from bot.tasks import Queue

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
EMOJI = json.loads((FIXTURES / "gitlab" / "webhooks" / "emoji.award.issue_note.json").read_text())
NOTE = json.loads((FIXTURES / "gitlab" / "webhooks" / "note.merge_request.json").read_text())
GH_REPLY = json.loads(
    (FIXTURES / "github" / "webhooks" / "pull_request_review_comment.created.1.json").read_text()
)
GH_THREAD = json.loads(
    (FIXTURES / "github" / "webhooks" / "pull_request_review_thread.resolved.2.json").read_text()
)
SECRET = "feedback-secret"


@pytest.fixture
def setup(engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[TestClient, Queue, int]]:
    """Two projects (GitLab, GitHub), each with one posted finding; the app with a real queue."""
    with db.session_scope(engine) as session:
        for forge, path in (("gitlab", "group/app"), ("github", "Codertocat/Hello-World")):
            project = Project(
                forge=forge,
                forge_url="http://forge.test",
                path=path,
                webhook_secret=SECRET,
                bot_username="reviewbot",
            )
            session.add(project)
            session.flush()
            review = Review(project_id=project.id, mr_number=1, head_sha="a" * 40)
            session.add(review)
            session.flush()
            session.add(
                Finding(review_id=review.id, path="app.py", line=3, severity="major", title="Leak",
                        review="r", fingerprint="f" * 16, model_version="base",
                        forge_comment_id=f"{forge}-501", forge_thread_id=f"{forge}-disc-1")
            )  # fmt: skip
    queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0)
    with TestClient(create_app(engine, queue)) as client:
        yield client, queue, 0


def gitlab(client: TestClient, event: str, payload: dict[str, Any]) -> Any:
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    return client.post("/webhooks/gitlab", content=json.dumps(payload), headers=headers)


def github(client: TestClient, event: str, payload: dict[str, Any]) -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }
    return client.post("/webhooks/github", content=body, headers=headers)


def award(
    note_id: str, name: str = "thumbsup", action: str = "award", user: str = "ana", award_id: int = 9
) -> dict[str, Any]:
    payload = copy.deepcopy(EMOJI)
    payload["project"]["path_with_namespace"] = "group/app"
    payload["user"]["username"] = user
    payload["object_attributes"].update(id=award_id, name=name, action=action, awardable_id=note_id)
    payload["note"]["noteable_type"] = "MergeRequest"
    payload.pop("issue", None)
    return payload


def note(
    text: str, discussion: str, note_id: int = 77, action: str = "create", user: str = "ana"
) -> dict[str, Any]:
    payload = copy.deepcopy(NOTE)
    payload["project"]["path_with_namespace"] = "group/app"
    payload["user"]["username"] = user
    payload["object_attributes"].update(id=note_id, note=text, discussion_id=discussion, action=action)
    return payload


def signals(engine: sa.Engine, forge: str) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        rows = session.exec(
            select(Feedback)
            .join(Finding)
            .where(Finding.forge_comment_id == f"{forge}-501")
            .order_by(Feedback.id)
        ).all()
        return [(r.kind, r.value, r.author) for r in rows]


def label(engine: sa.Engine, forge: str) -> LabelState:
    return next(i.label.state for i in labelled_findings(engine) if i.project.forge == forge)


def test_gitlab_awards_and_replies(setup: tuple[TestClient, Queue, int], engine: sa.Engine) -> None:
    client, _, _ = setup
    assert gitlab(client, "Emoji Hook", award("gitlab-501")).status_code == 200
    assert signals(engine, "gitlab") == [("reaction", "+1", "ana")] and label(engine, "gitlab") == "confirmed"
    assert (
        gitlab(client, "Emoji Hook", award("gitlab-501", action="revoke")).status_code == 200
    )  # same award id
    assert signals(engine, "gitlab") == [("reaction", "", "ana")] and label(engine, "gitlab") == "unlabelled"
    assert (
        gitlab(client, "Emoji Hook", award("gitlab-501", name="thumbsdown", award_id=10)).status_code == 200
    )
    assert label(engine, "gitlab") == "disputed"

    assert (
        gitlab(client, "Note Hook", note("/severity minor\nonly a style issue", "gitlab-disc-1")).status_code
        == 200
    )
    assert label(engine, "gitlab") == "corrected"
    edited = note("/dismiss the input is trusted", "gitlab-disc-1", action="update")  # same note id: updated
    assert gitlab(client, "Note Hook", edited).status_code == 200
    assert label(engine, "gitlab") == "dismissed"
    assert ("dismiss", "the input is trusted", "ana") in signals(engine, "gitlab")
    assert len(signals(engine, "gitlab")) == 3

    assert "not feedback" in gitlab(client, "Emoji Hook", award("gitlab-501", name="tada")).json()["detail"]
    own = gitlab(
        client, "Note Hook", note("/severity critical", "gitlab-disc-1", note_id=78, user="reviewbot")
    )
    assert "bot itself" in own.json()["detail"] and label(engine, "gitlab") == "dismissed"


def test_github_replies_and_thread_resolution(
    setup: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, _, _ = setup
    reply = copy.deepcopy(GH_REPLY)
    reply["comment"].update(in_reply_to_id="github-501", body="/severity trivial")
    assert github(client, "pull_request_review_comment", reply).status_code == 200
    assert label(engine, "github") == "corrected"
    deleted = copy.deepcopy(reply)
    deleted["action"] = "deleted"  # the reviewer took the correction back
    assert github(client, "pull_request_review_comment", deleted).status_code == 200
    assert label(engine, "github") == "unlabelled"
    thread = copy.deepcopy(GH_THREAD)
    thread["thread"]["comments"][0]["id"] = "github-501"
    assert github(client, "pull_request_review_thread", thread).status_code == 200
    assert ("resolved", "true", GH_THREAD["sender"]["login"]) in signals(engine, "github")
    top_level = copy.deepcopy(GH_REPLY)  # a new comment, not a reply to the bot: nothing to record
    assert "answers no comment" in github(client, "pull_request_review_comment", top_level).json()["detail"]


def test_feedback_that_outruns_its_finding_waits(
    setup: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, queue, _ = setup
    early = gitlab(client, "Emoji Hook", award("gitlab-999", award_id=31))
    assert early.status_code == 202 and "queued until its finding is known" in early.json()["detail"]
    queue.huey.execute(queue.huey.dequeue())  # the review job has not recorded the finding yet: retried
    assert queue.huey.pending_count() == 1
    with db.session_scope(engine) as session:  # ... now it has
        finding = session.exec(select(Finding).where(Finding.forge_comment_id == "gitlab-501")).one()
        finding.forge_comment_id = "gitlab-999"
    queue.huey.execute(queue.huey.dequeue())
    assert label(engine, "gitlab") == "confirmed"
    with Session(engine) as session:
        assert session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome == "recorded reaction"


def test_feedback_on_someone_elses_comment_is_dropped_visibly(
    setup: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, queue, _ = setup
    assert gitlab(client, "Emoji Hook", award("not-a-bot-note", award_id=41)).status_code == 202
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
    with Session(engine) as session:
        outcome = session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome
        assert outcome.startswith("feedback matched no finding of the bot") and "not-a-bot-note" in outcome
        assert session.exec(select(Feedback)).all() == []


def gitlab_mr_with_bot_finding(engine: sa.Engine, url: str, fake: Any) -> tuple[Any, Any, Any, Any]:
    """On the fake GitLab: an MR by ana with one bot discussion; in the database: the project, a done
    review and the finding posted as that discussion. Returns (mr, bot, the bot's note, discussion)."""
    from datetime import UTC, datetime

    from tests.support.fake_gitlab import change

    bot, ana = fake.add_user("reviewbot", "bot-token"), fake.add_user("ana", "ana-token")
    mr = fake.add_merge_request(fake.add_project("group/app"), [change("a.py", "x\n", "y\n")], author=ana)
    ours = fake.add_note(
        mr, bot, "**major** · Leak <!-- reviewbot:finding:ffffffffffffffff -->", resolvable=True
    )
    discussion = mr.discussions[-1]
    with db.session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url=url, path="group/app", webhook_secret=SECRET,
                          bot_username="reviewbot", token_env="TEST_GITLAB_TOKEN")  # fmt: skip
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=mr.iid, head_sha=mr.sha, status="done",
                        finished_at=datetime.now(UTC))  # fmt: skip
        session.add(review)
        session.flush()
        session.add(Finding(review_id=review.id, path="a.py", line=1, severity="major", title="Leak",
                            review="r", fingerprint="f" * 16, model_version="base",
                            forge_comment_id=str(ours.id), forge_thread_id=discussion.id))  # fmt: skip
    return mr, bot, ours, discussion


def test_a_command_is_acknowledged_on_the_forge(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.fake_gitlab import FakeGitLab, Note
    from tests.support.live_server import live_server

    fake = FakeGitLab()
    monkeypatch.setenv("TEST_GITLAB_TOKEN", "bot-token")
    with live_server(fake.app) as url:
        _, bot, ours, discussion = gitlab_mr_with_bot_finding(engine, url, fake)
        theirs = Note(4242, fake.users["ana-token"], "/severity minor", resolvable=True)
        discussion.notes.append(theirs)
        queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0)
        with TestClient(create_app(engine, queue)) as client:
            response = gitlab(client, "Note Hook", note("/severity minor", discussion.id, note_id=theirs.id))
            assert response.status_code == 200
            again = note(
                "/severity minor", discussion.id, note_id=theirs.id, action="update"
            )  # unchanged edit
            assert gitlab(client, "Note Hook", again).status_code == 200
        while (task := queue.huey.dequeue()) is not None:
            queue.huey.execute(task)
    assert theirs.awards == [(bot, "eyes")]
    replies = [n.body for n in discussion.notes if n.author is bot and n is not ours]
    assert len(replies) == 1 and "severity corrected to **minor**" in replies[0]
    assert label(engine, "gitlab") == "corrected"


def test_github_reactions_are_polled(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.support.fake_github import FakeGitHub, SeedFile
    from tests.support.live_server import live_server

    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    fake.add_pull("o/r", 3, [SeedFile("a.py", "x\n", "y\n")])
    ours = fake.add_review_comment(
        "o/r", 3, "reviewbot", "finding <!-- reviewbot:finding:ffffffffffffffff -->", "a.py"
    )
    someone_elses = fake.add_review_comment("o/r", 3, "alice", "a human comment", "a.py")
    fake.review_comments[someone_elses].reactions["+1"] = 5
    monkeypatch.setenv("TEST_GITHUB_TOKEN", "bot-token")
    with live_server(fake.app) as url:
        with db.session_scope(engine) as session:
            project = Project(
                forge="github",
                forge_url=url,
                path="o/r",
                webhook_secret=SECRET,
                token_env="TEST_GITHUB_TOKEN",
            )
            session.add(project)
            session.flush()
            for finished, number in ((datetime.now(UTC), 3), (datetime.now(UTC) - timedelta(days=30), 4)):
                review = Review(
                    project_id=project.id,
                    mr_number=number,
                    head_sha="a" * 40,
                    status="done",
                    finished_at=finished,
                )
                session.add(review)
                session.flush()
                comment = str(ours + number - 3)  # PR 4's finding points at a comment that is not polled
                session.add(Finding(review_id=review.id, path="a.py", line=1, severity="minor", title="t",
                                    review="r", fingerprint="f" * 16, model_version="base",
                                    forge_comment_id=comment))  # fmt: skip
        queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0)

        assert queue.poll_feedback(engine) == 0  # no reaction yet: nothing stored
        fake.review_comments[ours].reactions["+1"] = 2
        assert queue.poll_feedback(engine) == 1
        assert queue.poll_feedback(engine) == 0  # unchanged: no new row, no update ...
        assert fake.not_modified == 1  # ... and GitHub answered the conditional request with a 304
        assert label(engine, "github") == "confirmed"
        fake.review_comments[ours].reactions.update({"+1": 0, "-1": 1})
        assert queue.poll_feedback(engine) == 2
    with Session(engine) as session:
        rows = session.exec(select(Feedback).order_by(Feedback.source_event_id)).all()
        assert [(r.source_event_id, r.value) for r in rows] == [
            (f"poll:{ours}:+1", ""),
            (f"poll:{ours}:-1", "-1"),
        ]
    assert (
        next(i.label.state for i in labelled_findings(engine) if i.finding.forge_comment_id == str(ours))
        == "disputed"
    )
    # Only PR 3 was polled: PR 4's review is older than the polling window.
    assert sum(1 for r in fake.requests if r.path.endswith("/pulls/4/comments")) == 0


def test_gitlab_thread_resolution_is_polled(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.fake_gitlab import FakeGitLab
    from tests.support.live_server import live_server

    fake = FakeGitLab()
    monkeypatch.setenv("TEST_GITLAB_TOKEN", "bot-token")
    with live_server(fake.app) as url:
        _, _, ours, _ = gitlab_mr_with_bot_finding(engine, url, fake)
        queue = Queue(load_settings(queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0)
        assert queue.poll_feedback(engine) == 0  # open thread: nothing to say
        ours.resolved = True
        assert queue.poll_feedback(engine) == 1
        assert queue.poll_feedback(engine) == 0
        ours.resolved = False  # reopened
        assert queue.poll_feedback(engine) == 1
    with Session(engine) as session:
        rows = session.exec(select(Feedback)).all()
        assert [(r.kind, r.value) for r in rows] == [("resolved", "false")]
