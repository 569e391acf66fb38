"""The whole path on GitLab: webhook → queue → review job → real vLLM student → fake GitLab, then a push.

Nothing is posted twice, a push re-reviews only what changed, outdated comments are resolved and
the summary is edited in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.api import create_app
from bot.config import load_settings
from bot.forges.base import parse_marker
from bot.models import Feedback, Finding, Project, Review, ReviewStatus
from bot.queue import Queue
from tests.support.db import session_scope
from tests.support.fake_gitlab import FakeGitLab, MergeRequest, change
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.secrets import project_row, settings_with_key
from tests.support.vllm_server import VLLMServer

pytestmark = pytest.mark.vllm

FIXTURE = FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json"
SECRET = "flow-secret"
APP_V0 = "".join(f"def handler_{i}(request):\n    return respond(request, {i})\n\n" for i in range(30))
APP_V1 = APP_V0.replace("respond(request, 4)", "respond(eval(request.body), 4)")
APP_V2 = APP_V0.replace("respond(request, 20)", "open(request.path).read()")  # line 4's change reverted
UTIL_V0 = "".join(f"LIMIT_{i} = {i}\n" for i in range(20))
UTIL_V1 = UTIL_V0.replace("LIMIT_7 = 7", "LIMIT_7 = compute_limit(7)")


@pytest.fixture
def gitlab() -> Iterator[tuple[FakeGitLab, str]]:
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    fake.add_user("alice", "alice-token")
    fake.add_project("group/app")
    with live_server(fake.app) as url:
        yield fake, url


def deliver(client: TestClient, mr: MergeRequest, action: str, oldrev: str | None = None) -> int:
    payload: dict[str, Any] = json.loads(FIXTURE.read_text())
    payload["project"]["path_with_namespace"] = "group/app"
    payload["user"]["username"] = "alice"
    attributes = payload["object_attributes"]
    attributes.update(iid=mr.iid, action=action, last_commit={**attributes["last_commit"], "id": mr.sha})
    if oldrev:
        attributes["oldrev"] = oldrev
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET}
    response = client.post("/webhooks/gitlab", content=json.dumps(payload), headers=headers)
    assert response.status_code == 202, response.json()
    return int(response.json()["review_id"])


def run_jobs(queue: Queue) -> None:
    """Every job the intake wrote to the outbox, and those its jobs wrote in turn."""
    queue.relay.drain()
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
        queue.relay.drain()


def bot_notes(mr: MergeRequest) -> list[tuple[str, Any]]:
    """(kind, note) of the bot's marked notes on the MR."""
    found = []
    for discussion in mr.discussions:
        for note in discussion.notes:
            marker = parse_marker(note.body)
            if note.author.username == "reviewbot" and marker:
                found.append((marker[0], note))
    return found


def test_review_then_push(
    gitlab: tuple[FakeGitLab, str], vllm_server: VLLMServer, engine: sa.Engine, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fake, url = gitlab
    monkeypatch.setenv("REVIEWBOT_TOKEN_GITLAB", "bot-token")
    with session_scope(engine) as session:
        session.add(
            project_row(
                SECRET, forge="gitlab", forge_url=url, path="group/app",
                token_env="REVIEWBOT_TOKEN_GITLAB", bot_username="reviewbot", severity_threshold="trivial",
            )
        )  # fmt: skip
    settings = settings_with_key(
        student_base_url=vllm_server.base_url,
        student_model="tiny-student",
        queue_url=f"sqlite:///{tmp_path}/q.db",
    )
    queue = Queue(settings, engine, retry_delay_s=0)
    project = fake.projects[0]
    mr = fake.add_merge_request(
        project,
        [change("app.py", APP_V0, APP_V1), change("util.py", UTIL_V0, UTIL_V1)],
        author=fake.users["alice-token"],
    )

    with TestClient(create_app(engine, queue, settings)) as client:
        first = deliver(client, mr, "open")
        run_jobs(queue)
        with Session(engine) as session:
            review = session.get(Review, first)
            findings = session.exec(select(Finding).where(Finding.review_id == first)).all()
        assert review is not None
        assert review.status == ReviewStatus.DONE, review
        assert findings, "the tiny student found nothing; the flow would prove little"
        notes = bot_notes(mr)
        posted = [note for kind, note in notes if kind == "finding"]
        assert len(posted) == len(findings)
        assert [k for k, _ in notes].count("summary") == 1
        assert {str(n.id) for n in posted} == {f.forge_comment_id for f in findings}
        assert all(f.forge_thread_id for f in findings)  # GitLab replies arrive by discussion id

        # The same job again (a redelivered queue message): done reviews do nothing.
        writes = len(fake.writes())
        queue.enqueue_review(first)
        run_jobs(queue)
        assert len(fake.writes()) == writes

        # A push that changes app.py only: util.py is not reviewed again, app.py's old comments that
        # are not found again are resolved, and the one summary is edited in place.
        old_head = mr.sha
        fake.push(mr, [change("app.py", APP_V0, APP_V2), change("util.py", UTIL_V0, UTIL_V1)])
        stale = deliver(client, mr, "update", oldrev=old_head)
        run_jobs(queue)
        with Session(engine) as session:
            second = session.get(Review, stale)
            app_findings = {f.fingerprint for f in findings if f.path == "app.py"}
            new_findings = session.exec(select(Finding).where(Finding.review_id == stale)).all()
        assert second is not None
        assert second.status == ReviewStatus.DONE, second
        assert {f.path for f in new_findings} <= {"app.py"}  # util.py unchanged since the last review
        summaries = [note for kind, note in bot_notes(mr) if kind == "summary"]
        assert len(summaries) == 1
        assert "unchanged since the last review" in summaries[0].body
        fingerprints = [parse_marker(n.body)[1] for k, n in bot_notes(mr) if k == "finding"]  # type: ignore[index]
        assert len(fingerprints) == len(set(fingerprints))  # nothing posted twice
        still_found = {f.fingerprint for f in new_findings}
        resolved = {
            parse_marker(note.body)[1]  # type: ignore[index]
            for discussion in mr.discussions if discussion.notes[0].resolved
            for note in discussion.notes
        }  # fmt: skip
        assert resolved == app_findings - still_found
        with Session(engine) as session:
            addressed = {
                row.finding_id
                for row in session.exec(select(Feedback).where(Feedback.kind == "addressed")).all()
            }
        for finding in findings:
            if finding.path == "util.py":
                assert finding.id not in addressed  # util.py did not change
            elif "eval(request.body)" in finding.anchor_text:
                assert finding.id in addressed  # the push removed that line

        # A review queued for a head the MR has left behind does nothing.
        with session_scope(engine) as session:
            behind = Review(project_id=second.project_id, mr_number=mr.iid, head_sha=old_head)
            session.add(behind)
            session.flush()
            behind_id = behind.id
        queue.enqueue_review(behind_id)  # type: ignore[arg-type]
        run_jobs(queue)
        with Session(engine) as session:
            assert session.get(Review, behind_id).status == ReviewStatus.SUPERSEDED  # type: ignore[union-attr]


def test_a_push_during_the_review_supersedes_it(
    gitlab: tuple[FakeGitLab, str], vllm_server: VLLMServer, engine: sa.Engine, tmp_path: Path
) -> None:
    from bot.forges.gitlab import GitLabForge

    fake, url = gitlab
    mr = fake.add_merge_request(
        fake.projects[0], [change("app.py", APP_V0, APP_V1)], author=fake.users["alice-token"]
    )

    class PushDuringReview(GitLabForge):
        def diff(self, merge_request: Any) -> str:
            text = super().diff(merge_request)
            fake.push(mr, [change("app.py", APP_V0, APP_V2)])  # lands while the model works
            return text

    with session_scope(engine) as session:
        project = Project(
            forge="gitlab", forge_url=url, path="group/app", webhook_secret=SECRET, bot_username="reviewbot"
        )
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=mr.iid, head_sha=mr.sha)
        session.add(review)
        session.flush()
        review_id = review.id
    settings = load_settings(
        student_base_url=vllm_server.base_url,
        student_model="tiny-student",
        queue_url=f"sqlite:///{tmp_path}/q.db",
    )
    queue = Queue(settings, engine, lambda p: PushDuringReview(url, "bot-token", p.path), retry_delay_s=0)
    queue.enqueue_review(review_id)  # type: ignore[arg-type]
    run_jobs(queue)
    with Session(engine) as session:
        row = session.get(Review, review_id)
    assert row is not None
    assert row.status == ReviewStatus.SUPERSEDED, row
    assert bot_notes(mr) == []
    assert fake.writes() == []
