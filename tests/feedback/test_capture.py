"""Reviewers' reactions arriving by webhook become feedback rows on the right finding — once each,
updated on revoke or edit — and a reaction that outruns its finding waits in the queue."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.api import create_app
from bot.config import load_settings
from bot.events import Role
from bot.feedback.labels import LabelState, labelled_findings
from bot.forges.base import PolledFeedback
from bot.models import Delivery, Feedback, Finding, Project, Review
from bot.queue import Queue
from bot.secrets import SecretBox
from tests.support.db import session_scope
from tests.support.fixtures import FIXTURES

EMOJI = json.loads((FIXTURES / "gitlab" / "webhooks" / "emoji.award.issue_note.json").read_text())
NOTE = json.loads((FIXTURES / "gitlab" / "webhooks" / "note.merge_request.json").read_text())
GH_REPLY = json.loads(
    (FIXTURES / "github" / "webhooks" / "pull_request_review_comment.created.1.json").read_text()
)
GH_THREAD = json.loads(
    (FIXTURES / "github" / "webhooks" / "pull_request_review_thread.resolved.2.json").read_text()
)
GH_ISSUE_COMMENT = json.loads((FIXTURES / "github" / "webhooks" / "issue_comment.created.1.json").read_text())
MR_HOOK = json.loads((FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json").read_text())
SECRET = "feedback-secret"
KEY = Fernet.generate_key().decode()  # the projects' webhook secrets are stored sealed with it
SEALED_SECRET = SecretBox(KEY).seal(SECRET)


@pytest.fixture
def setup(engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[TestClient, Queue, int]]:
    """Two projects (GitLab, GitHub), each with one posted finding; the app with a real queue, whose
    role jobs ask fake forges, where the reviewers of these tests are developers."""
    from bot.forges.github import GitHubForge
    from bot.forges.gitlab import GitLabForge
    from tests.support.fake_github import FakeGitHub
    from tests.support.fake_gitlab import FakeGitLab
    from tests.support.live_server import live_server

    fake_gitlab, fake_github = FakeGitLab(), FakeGitHub()
    fake_gitlab.add_user("reviewbot", "bot-token")
    fake_github.add_user("reviewbot", token="bot-token")
    group_app = fake_gitlab.add_project("group/app")
    fake_gitlab.add_member(group_app, fake_gitlab.add_user("ana", "ana-token"), 30)
    for login in (GH_REPLY["sender"]["login"], GH_THREAD["sender"]["login"]):
        fake_github.add_collaborator("Codertocat/Hello-World", login, "write")
    with live_server(fake_gitlab.app) as gitlab_url, live_server(fake_github.app) as github_url:
        urls = {"gitlab": gitlab_url, "github": github_url}
        yield from _setup(engine, tmp_path, urls, GitLabForge, GitHubForge)


def _setup(
    engine: sa.Engine, tmp_path: Path, urls: dict[str, str], gitlab_forge: Any, github_forge: Any
) -> Iterator[tuple[TestClient, Queue, int]]:
    with session_scope(engine) as session:
        for forge, path in (("gitlab", "group/app"), ("github", "Codertocat/Hello-World")):
            project = Project(
                forge=forge,
                forge_url=urls[forge],
                path=path,
                webhook_secret=SEALED_SECRET,
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

    def forges(project: Project) -> Any:
        if project.forge == "gitlab":
            return gitlab_forge(project.forge_url, "bot-token", project.path)
        return github_forge(project.forge_url, project.path, token="bot-token")

    settings = load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db")
    queue = Queue(settings, engine, forges, retry_delay_s=0)
    with TestClient(create_app(engine, queue, queue.settings)) as client:
        yield client, queue, 0


def gitlab(client: TestClient, event: str, payload: dict[str, Any], delivery: str | None = None) -> Any:
    headers = {
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
    }
    return client.post("/webhooks/gitlab", content=json.dumps(payload), headers=headers)


def github(client: TestClient, event: str, payload: dict[str, Any], delivery: str | None = None) -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
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


def run_jobs(queue: Queue) -> None:
    queue.relay.drain()  # the outbox's jobs onto the queue
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)


def label(engine: sa.Engine, forge: str, queue: Queue | None = None) -> LabelState:
    """The finding's label, once the jobs ``queue`` holds (reviewers' roles) have run."""
    if queue is not None:
        run_jobs(queue)
    return next(i.label.state for i in labelled_findings(engine) if i.project.forge == forge)


def outcomes(engine: sa.Engine) -> list[str]:
    """The outcome of every delivery, oldest first."""
    with Session(engine) as session:
        return [d.outcome for d in session.exec(select(Delivery).order_by(Delivery.id)).all()]


def test_gitlab_awards_and_replies(setup: tuple[TestClient, Queue, int], engine: sa.Engine) -> None:
    client, queue, _ = setup
    assert gitlab(client, "Emoji Hook", award("gitlab-501")).status_code == 200
    assert signals(engine, "gitlab") == [("reaction", "+1", "ana")]
    assert label(engine, "gitlab", queue) == "accepted"  # a 👍: valid; its severity not judged
    assert (
        gitlab(client, "Emoji Hook", award("gitlab-501", action="revoke")).status_code == 200
    )  # same award id
    assert signals(engine, "gitlab") == [("reaction", "", "ana")]
    assert label(engine, "gitlab", queue) == "unlabelled"
    assert (
        gitlab(client, "Emoji Hook", award("gitlab-501", name="thumbsdown", award_id=10)).status_code == 200
    )
    assert label(engine, "gitlab", queue) == "disputed"

    assert (
        gitlab(client, "Note Hook", note("/severity minor\nonly a style issue", "gitlab-disc-1")).status_code
        == 200
    )
    assert label(engine, "gitlab", queue) == "corrected"
    edited = note("/dismiss the input is trusted", "gitlab-disc-1", action="update")  # same note id: updated
    assert gitlab(client, "Note Hook", edited).status_code == 200
    assert label(engine, "gitlab", queue) == "dismissed"
    assert ("dismiss", "the input is trusted", "ana") in signals(engine, "gitlab")
    assert len(signals(engine, "gitlab")) == 3

    assert "not feedback" in gitlab(client, "Emoji Hook", award("gitlab-501", name="tada")).json()["detail"]
    own = gitlab(
        client, "Note Hook", note("/severity critical", "gitlab-disc-1", note_id=78, user="reviewbot")
    )
    assert "bot itself" in own.json()["detail"]
    assert label(engine, "gitlab", queue) == "dismissed"


def test_github_replies_and_thread_resolution(
    setup: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, queue, _ = setup
    reply = copy.deepcopy(GH_REPLY)
    reply["comment"].update(in_reply_to_id="github-501", body="/severity trivial")
    assert github(client, "pull_request_review_comment", reply).status_code == 200
    assert label(engine, "github", queue) == "corrected"
    deleted = copy.deepcopy(reply)
    deleted["action"] = "deleted"  # the reviewer took the correction back
    assert github(client, "pull_request_review_comment", deleted).status_code == 200
    assert label(engine, "github", queue) == "unlabelled"
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
    assert early.status_code == 202
    assert "queued until its finding is known" in early.json()["detail"]
    queue.relay.drain()
    queue.huey.execute(queue.huey.dequeue())  # the review job has not recorded the finding yet: retried
    assert queue.huey.pending_count() == 1
    with session_scope(engine) as session:  # ... now it has
        finding = session.exec(select(Finding).where(Finding.forge_comment_id == "gitlab-501")).one()
        finding.forge_comment_id = "gitlab-999"
    queue.relay.drain()
    queue.huey.execute(queue.huey.dequeue())
    assert label(engine, "gitlab", queue) == "accepted"
    with Session(engine) as session:
        assert session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome == "recorded reaction"


def test_feedback_on_someone_elses_comment_is_dropped_visibly(
    setup: tuple[TestClient, Queue, int], engine: sa.Engine
) -> None:
    client, queue, _ = setup
    assert gitlab(client, "Emoji Hook", award("not-a-bot-note", award_id=41)).status_code == 202
    queue.relay.drain()  # the outbox's jobs onto the queue
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
    with Session(engine) as session:
        outcome = session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome
        assert outcome.startswith("feedback matched no finding of the bot")
        assert "not-a-bot-note" in outcome
        assert session.exec(select(Feedback)).all() == []


def gitlab_mr_with_bot_finding(engine: sa.Engine, url: str, fake: Any) -> tuple[Any, Any, Any, Any]:
    """On the fake GitLab: an MR by ana with one bot discussion; in the database: the project, a done
    review and the finding posted as that discussion. Returns (mr, bot, the bot's note, discussion)."""
    from tests.support.fake_gitlab import change

    bot = fake.add_user("reviewbot", "bot-token")
    ana, bo = fake.add_user("ana", "ana-token"), fake.add_user("bo", "bo-token")
    project = fake.add_project("group/app")
    fake.add_member(project, ana, 30)
    mr = fake.add_merge_request(project, [change("a.py", "x\n", "y\n")], author=bo)
    ours = fake.add_note(
        mr, bot, "**major** · Leak\n\n<!-- reviewbot:finding:ffffffffffffffff -->", resolvable=True
    )
    discussion = mr.discussions[-1]
    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url=url, path="group/app", webhook_secret=SEALED_SECRET,
                          bot_username="reviewbot", token_env="REVIEWBOT_TOKEN_TEST_GITLAB")  # fmt: skip
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
    monkeypatch.setenv("REVIEWBOT_TOKEN_TEST_GITLAB", "bot-token")
    with live_server(fake.app) as url:
        _, bot, ours, discussion = gitlab_mr_with_bot_finding(engine, url, fake)
        theirs = Note(4242, fake.users["ana-token"], "/severity minor", resolvable=True)
        discussion.notes.append(theirs)
        queue = Queue(
            load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0
        )
        with TestClient(create_app(engine, queue, queue.settings)) as client:
            response = gitlab(client, "Note Hook", note("/severity minor", discussion.id, note_id=theirs.id))
            assert response.status_code == 200
            again = note(
                "/severity minor", discussion.id, note_id=theirs.id, action="update"
            )  # unchanged edit
            assert gitlab(client, "Note Hook", again).status_code == 200
        queue.relay.drain()  # the outbox's jobs onto the queue
        while (task := queue.huey.dequeue()) is not None:
            queue.huey.execute(task)
    assert theirs.awards == [(bot, "eyes")]
    replies = [n.body for n in discussion.notes if n.author is bot and n is not ours]
    assert len(replies) == 1
    assert "severity corrected to **minor**" in replies[0]
    assert label(engine, "gitlab") == "corrected"


@dataclass
class PolledReactions:
    """Pull request 3 on a fake GitHub: the bot's comment and someone else's (with five 👍)."""

    engine: sa.Engine
    queue: Queue
    fake: Any
    ours: int  # the bot's review comment


@pytest.fixture
def reactions(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PolledReactions]:
    """PR 3, reviewed now, with the bot's finding; PR 4, reviewed 31 days ago (beyond the polling
    window), whose finding points at a comment that is not polled (someone else's, on PR 3). Dev and
    dora may write to the repository, max maintains it; anyone else reads it."""
    from tests.support.fake_github import FakeGitHub, SeedFile
    from tests.support.live_server import live_server

    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    for login, role in (("dev", "write"), ("dora", "write"), ("max", "maintain")):
        fake.add_collaborator("o/r", login, role)
    fake.add_user("stranger")
    fake.add_pull("o/r", 3, [SeedFile("a.py", "x\n", "y\n")])
    ours = fake.add_review_comment(
        "o/r", 3, "reviewbot", "finding\n\n<!-- reviewbot:finding:ffffffffffffffff -->", "a.py"
    )
    someone_elses = fake.add_review_comment("o/r", 3, "alice", "a human comment", "a.py")
    for login in ("dev", "dora", "max"):
        fake.react(someone_elses, login, "+1")
    monkeypatch.setenv("REVIEWBOT_TOKEN_TEST_GITHUB", "bot-token")
    with live_server(fake.app) as url:
        with session_scope(engine) as session:
            project = Project(
                forge="github",
                forge_url=url,
                path="o/r",
                webhook_secret=SEALED_SECRET,
                token_env="REVIEWBOT_TOKEN_TEST_GITHUB",
            )
            session.add(project)
            session.flush()
            for finished, number in ((datetime.now(UTC), 3), (datetime.now(UTC) - timedelta(days=31), 4)):
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
        queue = Queue(
            load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0
        )
        yield PolledReactions(engine, queue, fake, ours)


def polled_rows(engine: sa.Engine) -> list[tuple[str, str, str]]:
    """(author, value, role) of every polled reaction."""
    with Session(engine) as session:
        rows = session.exec(select(Feedback).order_by(Feedback.author, Feedback.source_event_id)).all()
    return [(r.author, r.value, r.role) for r in rows]


def polled_label(reactions: PolledReactions) -> LabelState:
    labelled = labelled_findings(reactions.engine)
    return next(i.label.state for i in labelled if i.finding.forge_comment_id == str(reactions.ours))


def test_polling_without_a_reaction_to_the_bot_stores_nothing(reactions: PolledReactions) -> None:
    assert reactions.queue.poll_feedback() == 0  # someone else's 👍 are not the bot's


def test_a_polled_github_reaction_is_stored_with_its_user_and_role(reactions: PolledReactions) -> None:
    assert reactions.queue.poll_feedback() == 0  # no reaction yet: nothing stored
    reactions.fake.react(reactions.ours, "dev", "+1")
    assert reactions.queue.poll_feedback() == 1
    assert polled_rows(reactions.engine) == [("dev", "+1", "developer")]  # the role, read in the poll
    assert polled_label(reactions) == "accepted"


def test_unchanged_github_reactions_are_answered_with_a_304_and_store_nothing(
    reactions: PolledReactions,
) -> None:
    assert reactions.queue.poll_feedback() == 0
    reactions.fake.react(reactions.ours, "dev", "+1")
    assert reactions.queue.poll_feedback() == 1
    assert reactions.queue.poll_feedback() == 0  # unchanged: no new row, no update ...
    assert reactions.fake.not_modified == 1  # ... and GitHub answered the conditional request with a 304


def test_a_removed_github_reaction_withdraws_its_row(reactions: PolledReactions) -> None:
    reactions.fake.react(reactions.ours, "dev", "+1")
    reactions.fake.react(reactions.ours, "dora", "+1")
    assert reactions.queue.poll_feedback() == 2
    assert reactions.queue.poll_feedback() == 0  # answered with a 304: a later change is still seen
    reactions.fake.unreact(reactions.ours, "dev", "+1")
    reactions.fake.react(reactions.ours, "dev", "-1")
    assert reactions.queue.poll_feedback() == 2
    assert polled_rows(reactions.engine) == [
        ("dev", "", "developer"),  # the 👍 taken back
        ("dev", "-1", "developer"),
        ("dora", "+1", "developer"),
    ]
    assert polled_label(reactions) == "disputed"  # a developer's 👍 against a developer's 👎


def test_many_untrusted_thumbs_neither_confirm_nor_dispute(reactions: PolledReactions) -> None:
    """Anyone may react on a public repository: reactions are recorded with their users' roles, and
    only those of the project's developers and above count."""
    reactions.fake.add_collaborator("o/r", "helper[bot]", "write")  # a GitHub App's account
    for login in ("stranger", "helper[bot]"):
        reactions.fake.react(reactions.ours, login, "-1")
    reactions.fake.react(reactions.ours, "dev", "+1")
    assert reactions.queue.poll_feedback() == 3
    assert polled_rows(reactions.engine) == [
        ("dev", "+1", "developer"),
        ("helper[bot]", "-1", "developer"),  # may write, but a bot: never labels
        ("stranger", "-1", "guest"),
    ]
    assert polled_label(reactions) == "accepted"


def test_a_maintainers_thumb_outranks_a_developers(reactions: PolledReactions) -> None:
    reactions.fake.react(reactions.ours, "dev", "-1")
    reactions.fake.react(reactions.ours, "max", "+1")
    reactions.queue.poll_feedback()
    assert polled_label(reactions) == "accepted"


def test_roles_are_read_once_per_user_in_a_few_minutes(reactions: PolledReactions) -> None:
    reactions.fake.react(reactions.ours, "dev", "+1")
    reactions.queue.poll_feedback()
    reactions.fake.react(reactions.ours, "dev", "-1")
    reactions.queue.poll_feedback()
    assert reactions.fake.count("GET", "/repos/o/r/collaborators/dev/permission") == 1


def test_github_reactions_are_polled_only_within_the_window(reactions: PolledReactions) -> None:
    assert reactions.queue.poll_feedback() == 0
    assert sum(1 for r in reactions.fake.requests if r.path.endswith("/pulls/3/comments")) > 0
    # Only PR 3 was polled: PR 4's review is older than the polling window.
    assert sum(1 for r in reactions.fake.requests if r.path.endswith("/pulls/4/comments")) == 0


def test_gitlab_thread_resolution_is_polled(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.fake_gitlab import FakeGitLab
    from tests.support.live_server import live_server

    fake = FakeGitLab()
    monkeypatch.setenv("REVIEWBOT_TOKEN_TEST_GITLAB", "bot-token")
    with live_server(fake.app) as url:
        _, _, ours, _ = gitlab_mr_with_bot_finding(engine, url, fake)
        queue = Queue(
            load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0
        )
        assert queue.poll_feedback() == 0  # open thread: nothing to say
        ours.resolved = True
        assert queue.poll_feedback() == 1
        assert queue.poll_feedback() == 0
        ours.resolved = False  # reopened
        assert queue.poll_feedback() == 1
    with Session(engine) as session:
        rows = session.exec(select(Feedback)).all()
        assert [(r.kind, r.value) for r in rows] == [("resolved", "false")]


CLOSED_PR = json.loads((FIXTURES / "github" / "webhooks" / "pull_request.closed.1.json").read_text())[
    "number"
]
EVERY_REQUEST = {("group/app", 1), ("group/app", 2), ("Codertocat/Hello-World", CLOSED_PR)}


def mr_event(action: str) -> dict[str, Any]:
    """GitLab's merge request hook for merge request 1 of group/app."""
    payload = copy.deepcopy(MR_HOOK)
    payload["project"]["path_with_namespace"] = "group/app"
    payload["object_attributes"].update(action=action, iid=1)
    return payload


def pull_request_event(name: str) -> dict[str, Any]:
    """One of GitHub's pull_request examples, for CLOSED_PR of Codertocat/Hello-World."""
    return dict(json.loads((FIXTURES / "github" / "webhooks" / f"pull_request.{name}.json").read_text()))


@dataclass
class Polling:
    """Merge requests 1 and 2 of group/app (GitLab) and CLOSED_PR (GitHub), two done reviews each,
    behind a forge that notes what is polled and finds nothing."""

    engine: sa.Engine
    client: TestClient
    queue: Queue
    polled: list[tuple[str, int]]

    def polled_after(self, days: float) -> set[tuple[str, int]]:
        self.polled.clear()
        self.queue.poll_feedback(now=datetime.now(UTC) + timedelta(days=days))
        return set(self.polled)

    def merge(self) -> Any:
        """Merge request 1 merged (always the same delivery)."""
        return gitlab(self.client, "Merge Request Hook", mr_event("merge"), delivery="merge-1")

    def close(self) -> Any:
        """CLOSED_PR closed."""
        return github(self.client, "pull_request", pull_request_event("closed.1"))

    def merge_and_close(self) -> None:
        assert (self.merge().status_code, self.close().status_code) == (200, 200)


@pytest.fixture
def polling(engine: sa.Engine, tmp_path: Path) -> Iterator[Polling]:
    from bot.feedback.polling import POLL_DAYS_AFTER_CLOSE, POLL_DAYS_OPEN

    assert (POLL_DAYS_AFTER_CLOSE, POLL_DAYS_OPEN) == (3, 30)  # the days these tests step through
    with session_scope(engine) as session:
        for forge, path, numbers in (
            ("gitlab", "group/app", (1, 2)),
            ("github", "Codertocat/Hello-World", (CLOSED_PR,)),
        ):
            project = Project(forge=forge, forge_url="http://forge.test", path=path,
                              webhook_secret=SEALED_SECRET, bot_username="reviewbot")  # fmt: skip
            session.add(project)
            session.flush()
            for number in numbers:
                for _ in range(2):  # two reviews of each: both rows get the close time
                    session.add(Review(project_id=project.id, mr_number=number, head_sha="a" * 40,
                                       status="done", finished_at=datetime.now(UTC)))  # fmt: skip
    polled: list[tuple[str, int]] = []

    class Polled:  # stands in for both forges: notes what is polled, finds nothing
        def __init__(self, project: Project) -> None:
            self.path = project.path

        def poll_feedback(self, number: int, etag: str | None = None) -> tuple[PolledFeedback, None]:
            del etag
            polled.append((self.path, number))
            return PolledFeedback(), None

        def member_role(self, username: str) -> Role:
            raise AssertionError(f"nothing polled, so no role to read ({username})")

    settings = load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db")
    queue = Queue(settings, engine, Polled, retry_delay_s=0)  # type: ignore[arg-type]
    with TestClient(create_app(engine, queue, queue.settings)) as client:
        yield Polling(engine, client, queue, polled)


def test_open_merge_requests_with_a_recent_review_are_polled(polling: Polling) -> None:
    assert polling.polled_after(0) == EVERY_REQUEST


def test_a_merge_or_close_is_recorded(polling: Polling) -> None:
    merged, closed = polling.merge(), polling.close()
    assert merged.status_code == 200
    assert "merged or closed" in merged.json()["detail"]
    assert closed.status_code == 200
    assert "merged or closed" in closed.json()["detail"]
    assert outcomes(polling.engine)[:2] == [
        "recorded: merge request 1 merged or closed",
        f"recorded: merge request {CLOSED_PR} merged or closed",
    ]


def test_a_merge_or_close_starts_no_review(polling: Polling) -> None:
    polling.merge_and_close()
    with Session(polling.engine) as session:
        assert len(session.exec(select(Review)).all()) == 6  # no review was started
    assert polling.queue.huey.pending_count() == 0


def test_a_merge_or_close_stamps_every_review_of_the_request(polling: Polling) -> None:
    polling.merge_and_close()
    with Session(polling.engine) as session:
        stamped = session.exec(
            select(Project.path, Review.mr_number).join(Project).where(Review.mr_closed_at != None)  # noqa: E711
        ).all()
    assert sorted(stamped) == sorted([("group/app", 1)] * 2 + [("Codertocat/Hello-World", CLOSED_PR)] * 2)


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        pytest.param(1, EVERY_REQUEST, id="closed a day ago: still polled"),
        pytest.param(4, {("group/app", 2)}, id="closed four days ago: no more"),
        pytest.param(31, set(), id="open, but its last review was a month ago"),
    ],
)
def test_polling_ends_days_after_a_merge_or_close(
    polling: Polling, days: float, expected: set[tuple[str, int]]
) -> None:
    polling.merge_and_close()
    assert polling.polled_after(days) == expected


def test_a_replayed_merge_does_not_restart_the_clock(polling: Polling) -> None:
    polling.merge_and_close()
    with session_scope(polling.engine) as session:
        session.execute(sa.update(Review).values(mr_closed_at=datetime.now(UTC) - timedelta(days=4))
                        .where(sa.column("mr_number") == 1))  # fmt: skip
    replay = polling.merge()  # the same delivery again is a duplicate ...
    assert replay.status_code == 200
    assert "duplicate" in replay.json()["detail"]
    assert ("group/app", 1) not in polling.polled_after(0)  # ... of a close long past


def test_a_reopened_merge_request_is_reviewed_again(polling: Polling) -> None:
    polling.merge_and_close()
    reopened = gitlab(polling.client, "Merge Request Hook", mr_event("reopen"))
    reopened_pr = github(polling.client, "pull_request", pull_request_event("reopened.1"))
    assert (reopened.status_code, reopened_pr.status_code) == (202, 202)


def test_a_reopened_merge_request_is_polled_again(polling: Polling) -> None:
    polling.merge_and_close()
    gitlab(polling.client, "Merge Request Hook", mr_event("reopen"))
    github(polling.client, "pull_request", pull_request_event("reopened.1"))
    assert polling.polled_after(4) == EVERY_REQUEST
    with Session(polling.engine) as session:
        assert session.exec(select(Review).where(Review.mr_closed_at != None)).all() == []  # noqa: E711


REPO = "Codertocat/Hello-World"  # the repository of GitHub's issue_comment examples
EVAL = "Unvalidated input reaches eval(); anyone who controls it runs code on the server."
OPEN = "Unvalidated input reaches open(); anyone who controls it reads any file."
QUOTING_OPEN = "> Unvalidated input reaches **open()**; anyone who\n> controls it reads\n\n/severity major"


def pr_comment(comment_id: int, body: str, action: str = "created", user: str = "ana") -> dict[str, Any]:
    """GitHub's issue_comment example, moved onto pull request 1 (so it carries ``issue.pull_request``)."""
    payload = copy.deepcopy(GH_ISSUE_COMMENT)
    payload["action"] = action
    payload["issue"].update(number=1, pull_request={"url": f"https://api.github.com/repos/{REPO}/pulls/1"})
    payload["comment"].update(id=comment_id, body=body)
    payload["comment"]["user"]["login"] = payload["sender"]["login"] = user
    return payload


@dataclass
class PullRequest:
    """Pull request 1 on a fake GitHub with two review comments of the bot (EVAL, OPEN), each a
    finding of a done review; the app with a real queue, served while the test runs."""

    engine: sa.Engine
    client: TestClient
    queue: Queue
    fake: Any
    comments: dict[str, int]  # finding text -> the bot's review comment
    project_id: int | None

    def link(self, text: str = EVAL) -> str:
        """GitHub's "Copy link" of the bot's comment on the finding."""
        return f"https://github.com/{REPO}/pull/1#discussion_r{self.comments[text]}"

    def comment(
        self,
        comment_id: int,
        body: str,
        action: str = "created",
        user: str = "ana",
        delivery: str | None = None,
    ) -> Any:
        return github(self.client, "issue_comment", pr_comment(comment_id, body, action, user), delivery)

    def link_command(self, delivery: str | None = None) -> tuple[int, str, Any]:
        """Ana's command with the link of the bot's comment on EVAL: (her comment, its body, the answer)."""
        body = f"/severity minor only admins reach it\n\n{self.link()}"
        ana = self.fake.add_issue_comment(REPO, 1, "ana", body)
        return ana, body, self.comment(ana, body, delivery=delivery)

    def quote_command(self) -> tuple[int, Any]:
        """A command with no link, but a quote of OPEN's text: (the comment, the answer)."""
        bob = self.fake.add_issue_comment(REPO, 1, "ana", QUOTING_OPEN)
        return bob, self.comment(bob, QUOTING_OPEN)

    def run_jobs(self) -> None:
        self.queue.relay.drain()  # the outbox's jobs onto the queue
        while (task := self.queue.huey.dequeue()) is not None:
            self.queue.huey.execute(task)

    def rows(self) -> dict[str, list[tuple[str, str]]]:
        with Session(self.engine) as session:
            found = session.exec(select(Feedback, Finding).join(Finding).order_by(Feedback.id)).all()
        return {
            finding.review: [(r.kind, r.value) for r, f in found if f.id == finding.id]
            for _, finding in found
        }

    def states(self) -> dict[str, str]:
        self.run_jobs()  # the reviewers' roles
        return {i.finding.review: i.label.state.value for i in labelled_findings(self.engine)}

    def bot_answers(self) -> list[str]:
        return [c.body for c in self.fake.issue_comments.values() if c.user == "reviewbot"]


@pytest.fixture
def pull_request(engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PullRequest]:
    from tests.support.fake_github import FakeGitHub, SeedFile
    from tests.support.live_server import live_server

    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    fake.add_collaborator(REPO, "ana", "write")
    fake.add_pull(REPO, 1, [SeedFile("a.py", "x\n", "y\n")])
    comments = {}
    for text, fingerprint in ((EVAL, "a" * 16), (OPEN, "b" * 16)):
        body = f"**critical** · t\n\n{text}\n\n<!-- reviewbot:finding:{fingerprint} -->"
        comments[text] = fake.add_review_comment(REPO, 1, "reviewbot", body, "a.py")
    monkeypatch.setenv("REVIEWBOT_TOKEN_TEST_GITHUB", "bot-token")
    with live_server(fake.app) as url:
        with session_scope(engine) as session:
            project = Project(forge="github", forge_url=url, path=REPO, webhook_secret=SEALED_SECRET,
                              bot_username="reviewbot", token_env="REVIEWBOT_TOKEN_TEST_GITHUB")  # fmt: skip
            session.add(project)
            session.flush()
            review = Review(project_id=project.id, mr_number=1, head_sha="b" * 40, status="done",
                            finished_at=datetime.now(UTC))  # fmt: skip
            session.add(review)
            session.flush()
            for text, comment_id in comments.items():
                session.add(Finding(review_id=review.id, path="a.py", line=1, severity="critical", title="t",
                                    review=text, fingerprint=text[:16], model_version="base",
                                    forge_comment_id=str(comment_id)))  # fmt: skip
        queue = Queue(
            load_settings(secret_key=KEY, queue_url=f"sqlite:///{tmp_path}/q.db"), engine, retry_delay_s=0
        )
        with TestClient(create_app(engine, queue, queue.settings)) as client:
            yield PullRequest(engine, client, queue, fake, comments, project.id)


def test_a_pull_request_comment_with_the_link_of_a_finding_is_recorded(pull_request: PullRequest) -> None:
    _, _, response = pull_request.link_command()
    assert response.status_code == 200
    assert "feedback recorded" in response.json()["detail"]
    assert pull_request.rows() == {EVAL: [("severity", "minor")]}
    assert pull_request.states()[EVAL] == "corrected"


def test_a_pull_request_comment_with_the_link_of_a_finding_is_answered_there(
    pull_request: PullRequest,
) -> None:
    ana, _, response = pull_request.link_command()
    assert response.status_code == 200
    pull_request.run_jobs()
    assert pull_request.fake.issue_comments[ana].reactions == [("reviewbot", "eyes")]
    assert pull_request.bot_answers() == ["@ana Noted: severity corrected to **minor**. Thank you — this goes"
                                          " into the training data of the next model."]  # fmt: skip


def test_a_pull_request_comment_delivered_twice_is_recorded_and_answered_once(
    pull_request: PullRequest,
) -> None:
    ana, body, first = pull_request.link_command(delivery="d-1")
    assert first.status_code == 200
    again = pull_request.comment(ana, body, delivery="d-1")
    assert "duplicate" in again.json()["detail"]
    pull_request.run_jobs()
    assert pull_request.rows() == {EVAL: [("severity", "minor")]}
    assert pull_request.fake.issue_comments[ana].reactions == [("reviewbot", "eyes")]
    assert len(pull_request.bot_answers()) == 1


def edit_into_a_dismissal(pull_request: PullRequest) -> Any:
    """Ana's linked command, answered, then edited into a dismissal: the answer to the edit."""
    ana, _, response = pull_request.link_command()
    assert response.status_code == 200
    pull_request.run_jobs()
    return pull_request.comment(ana, f"/dismiss admins are trusted\n\n{pull_request.link()}", action="edited")


def test_a_pull_request_comment_edited_changes_its_row(pull_request: PullRequest) -> None:
    assert edit_into_a_dismissal(pull_request).status_code == 200
    assert pull_request.rows() == {EVAL: [("dismiss", "admins are trusted")]}
    assert pull_request.states()[EVAL] == "dismissed"


def test_a_pull_request_comment_edited_is_answered_again(pull_request: PullRequest) -> None:
    assert edit_into_a_dismissal(pull_request).status_code == 200
    pull_request.run_jobs()
    assert len(pull_request.bot_answers()) == 2


def test_a_pull_request_comment_quoting_one_finding_is_recorded(pull_request: PullRequest) -> None:
    """No link, but a quote of exactly one finding's text (bold marks aside)."""
    _, response = pull_request.quote_command()
    assert response.status_code == 200
    assert pull_request.rows() == {OPEN: [("severity", "major")]}
    assert pull_request.states()[OPEN] == "corrected"


def test_a_pull_request_comment_quoting_one_finding_is_answered_there(pull_request: PullRequest) -> None:
    bob, response = pull_request.quote_command()
    assert response.status_code == 200
    pull_request.run_jobs()
    assert len(pull_request.bot_answers()) == 1
    assert pull_request.fake.issue_comments[bob].reactions == [("reviewbot", "eyes")]


def test_a_pull_request_comment_deleted_withdraws_its_command(pull_request: PullRequest) -> None:
    bob, response = pull_request.quote_command()
    assert response.status_code == 200
    assert pull_request.comment(bob, QUOTING_OPEN, action="deleted").status_code == 200
    assert pull_request.rows() == {OPEN: [("reply", "")]}
    assert pull_request.states()[OPEN] == "unlabelled"


@pytest.mark.parametrize(
    ("text", "reason", "outcome"),
    [
        pytest.param(
            "> Unvalidated input reaches\n\n/dismiss",  # both findings say it
            "quotes 2 findings of the bot",
            "ignored: pull request comment quotes 2 findings of the bot",
            id="quotes two findings",
        ),
        pytest.param(
            "> I would rather keep the old name here.\n\nFine by me",
            "quotes no finding of the bot",
            "ignored: pull request comment quotes no finding of the bot",
            id="quotes no finding",
        ),
        pytest.param(
            "LGTM, thanks for the review",
            "neither links nor quotes a comment of the bot",
            "ignored: pull request comment neither links nor quotes a comment of the bot",
            id="neither links nor quotes",
        ),
        pytest.param(
            "{eval_link} {open_link}",
            "links 2 comments",
            "ignored: links 2 comments; feedback must name one finding",
            id="links two comments",
        ),
    ],
)
def test_a_pull_request_comment_tied_to_no_finding_is_ignored_with_its_reason(
    pull_request: PullRequest, text: str, reason: str, outcome: str
) -> None:
    text = text.format(eval_link=pull_request.link(EVAL), open_link=pull_request.link(OPEN))
    response = pull_request.comment(900, text)
    assert response.status_code == 200
    assert reason in response.json()["detail"]
    assert outcomes(pull_request.engine)[-1] == outcome
    assert pull_request.rows() == {}


def test_a_comment_on_an_issue_is_ignored(pull_request: PullRequest) -> None:
    not_a_pr = github(pull_request.client, "issue_comment", GH_ISSUE_COMMENT)
    assert "not a pull request" in not_a_pr.json()["detail"]
    assert pull_request.rows() == {}


def test_a_pull_request_comment_of_the_bot_itself_is_ignored(pull_request: PullRequest) -> None:
    own = pull_request.comment(950, f"/severity trivial {pull_request.link()}", user="reviewbot")
    assert "bot itself" in own.json()["detail"]
    assert pull_request.rows() == {}


def test_a_quote_during_a_running_review_waits_then_says_it_matched_nothing(
    pull_request: PullRequest,
) -> None:
    """While a review of the pull request is still running, a quote may be of a finding it is
    posting: it waits in the queue, and says so on the delivery when nothing turns up."""
    with session_scope(pull_request.engine) as session:
        session.add(
            Review(project_id=pull_request.project_id, mr_number=1, head_sha="c" * 40, status="running")
        )
    early = pull_request.comment(960, "> A finding the running review is posting")
    assert early.status_code == 202
    pull_request.run_jobs()
    assert outcomes(pull_request.engine)[-1].startswith("feedback matched no finding of the bot")
    assert pull_request.rows() == {}


@dataclass
class QuickReviewer:
    """What a run of the review job saw and left, with the reviewer's feedback arriving mid-job."""

    seen_early: list[tuple[int, str, int]]  # (feedback rows, delivery outcome, jobs waiting) mid-review
    review: Review
    finding: Finding
    rows: list[Feedback]
    outcome: str  # of the last delivery
    mr: Any
    bot: Any


# What each reaction records: (the feedback row's kind and value, the delivery's outcome, the label).
RECORDED = {
    "command": ("severity", "minor", "recorded severity", "corrected"),
    "award": ("reaction", "+1", "recorded reaction", "accepted"),
}


@pytest.fixture
def quick_reviewer(
    reaction: str, engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> QuickReviewer:
    """A reviewer reacts to the bot's comment the moment it is posted, before the review job has
    marked its finding posted. Through the real queue and the real review job (fake GitLab, a scripted
    student): the feedback job finds nothing and is retried, then records one row once the job is done.
    ``reaction`` (parametrized by each test) is ``command`` (a reply) or ``award`` (a 👍)."""
    from bot.forges.gitlab import GitLabForge
    from tests.support.fake_gitlab import Discussion, FakeGitLab, change
    from tests.support.live_server import live_server
    from tests.support.scripted_server import Script, completion, scripted_server

    issue = {
        "line": 2,
        "side": "new",
        "title": "eval of input",
        "review": "eval() runs what the client sends.",
    }
    student = Script(
        [
            completion(json.dumps({"issues": [issue]})),  # find
            completion(json.dumps({"issue_type": "major"})),  # rate
            completion(json.dumps({"explanation": "Anyone can run code on the server."})),  # explain
        ]
    )
    fake = FakeGitLab()
    bot, ana = fake.add_user("reviewbot", "bot-token"), fake.add_user("ana", "ana-token")
    old, new = (
        "def handler(request):\n    return respond(request)\n",
        "def handler(request):\n    return eval(request.body)\n",
    )
    project = fake.add_project("group/app")
    fake.add_member(project, ana, 30)  # a developer reviews bo's merge request
    mr = fake.add_merge_request(project, [change("app.py", old, new)], author=fake.add_user("bo", "bo-token"))
    monkeypatch.setenv("REVIEWBOT_TOKEN_TEST_GITLAB", "bot-token")
    seen_early: list[tuple[int, str, int]] = []

    with live_server(fake.app) as url, scripted_server(student) as student_url:
        with session_scope(engine) as session:
            session.add(Project(forge="gitlab", forge_url=url, path="group/app",
                                webhook_secret=SEALED_SECRET, bot_username="reviewbot",
                                token_env="REVIEWBOT_TOKEN_TEST_GITLAB"))  # fmt: skip
        settings = load_settings(
            secret_key=KEY,
            student_base_url=student_url,
            student_model="scripted",
            queue_url=f"sqlite:///{tmp_path}/q.db",
        )

        class ReviewerIsQuick(GitLabForge):
            """The job posts the findings and then marks their rows posted: the reviewer's webhook
            arrives in between, and a second worker runs its feedback job at once."""

            def post_review(self, mr_: Any, diff: Any, comments: Any) -> Any:
                done = super().post_review(mr_, diff, comments)
                posted: Discussion = next(d for d in mr.discussions if d.notes[0].author is bot)
                if reaction == "command":
                    theirs = fake.add_reply(posted, ana, "/severity minor")
                    event, payload = "Note Hook", note("/severity minor", posted.id, note_id=theirs.id)
                else:
                    posted.notes[0].awards.append((ana, "thumbsup"))
                    event, payload = "Emoji Hook", award(str(posted.notes[0].id), award_id=71)
                response = gitlab(client, event, payload)
                assert response.status_code == 202, response.json()  # its finding is not posted yet
                queue.relay.drain()
                queue.huey.execute(queue.huey.dequeue())  # FindingNotYet: retried
                with Session(engine) as session:
                    rows = len(session.exec(select(Feedback)).all())
                    outcome = session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome
                seen_early.append((rows, outcome, queue.huey.pending_count()))
                return done

        queue = Queue(settings, engine, lambda p: ReviewerIsQuick(url, "bot-token", p.path), retry_delay_s=0)
        with TestClient(create_app(engine, queue, queue.settings)) as client:
            opened = copy.deepcopy(MR_HOOK)
            opened["project"]["path_with_namespace"] = "group/app"
            opened["object_attributes"].update(iid=mr.iid, action="open", last_commit={"id": mr.sha})
            assert gitlab(client, "Merge Request Hook", opened).status_code == 202
            queue.relay.drain()  # the outbox's jobs onto the queue
            while (task := queue.huey.dequeue()) is not None:  # the review, then what it left waiting
                queue.huey.execute(task)

    with Session(engine) as session:
        return QuickReviewer(
            seen_early=seen_early,
            review=session.exec(select(Review)).one(),
            finding=session.exec(select(Finding)).one(),
            rows=list(session.exec(select(Feedback)).all()),
            outcome=session.exec(select(Delivery).order_by(Delivery.id)).all()[-1].outcome,
            mr=mr,
            bot=bot,
        )


@pytest.mark.parametrize("reaction", ["command", "award"])
def test_feedback_that_outruns_the_review_job_waits_for_its_finding(quick_reviewer: QuickReviewer) -> None:
    assert quick_reviewer.seen_early == [(0, "feedback waiting for its finding", 1)]


@pytest.mark.parametrize("reaction", ["command", "award"])
def test_feedback_that_outruns_the_review_job_leaves_the_review_undisturbed(
    quick_reviewer: QuickReviewer,
) -> None:
    assert quick_reviewer.review.status == "done"
    assert quick_reviewer.review.mr_author == "bo"  # from the forge: their signals on it are the author's
    assert quick_reviewer.finding.severity == "major"


@pytest.mark.parametrize("reaction", ["command", "award"])
def test_feedback_that_outruns_the_review_job_is_recorded_once(
    reaction: str, quick_reviewer: QuickReviewer
) -> None:
    kind, value, outcome, _ = RECORDED[reaction]
    finding, rows = quick_reviewer.finding, quick_reviewer.rows
    assert [(r.finding_id, r.kind, r.value, r.author) for r in rows] == [(finding.id, kind, value, "ana")]
    assert quick_reviewer.outcome == outcome


@pytest.mark.parametrize("reaction", ["command", "award"])
@pytest.mark.usefixtures("quick_reviewer")
def test_feedback_that_outruns_the_review_job_labels_its_finding(reaction: str, engine: sa.Engine) -> None:
    assert label(engine, "gitlab") == RECORDED[reaction][3]


@pytest.mark.parametrize("reaction", ["command"])
def test_a_command_that_outruns_the_review_job_is_heard_once(quick_reviewer: QuickReviewer) -> None:
    mr, bot = quick_reviewer.mr, quick_reviewer.bot
    replies = [n for n in mr.discussions[0].notes if n.author is bot][1:]
    assert len(replies) == 1
    assert "severity corrected to **minor**" in replies[0].body
    assert mr.discussions[0].notes[1].awards == [(bot, "eyes")]
