"""The review job under pressure, with a scripted student and the real job against fake forges:
its call limit and deadline (what is left is listed and reviewed at the next push), a push between
its stages, findings recorded before they are posted (a retry after a crash mid-post loses and
duplicates nothing), stored text cut to its columns, and a summary within the forge's limit."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.config import load_settings
from bot.diff import Diff
from bot.forges.base import ForgeError, InlineComment, MergeRequest, PostedComment, parse_marker
from bot.forges.github import GitHubForge
from bot.forges.gitlab import GitLabForge
from bot.models import Feedback, Finding, FindingStatus, ForgeKind, Project, Review, ReviewStatus
from bot.review.job import run_review_job
from bot.untrusted import BODY_LIMITS
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fake_gitlab import FakeGitLab, FileChange, Note, change
from tests.support.fake_gitlab import MergeRequest as FakeMR
from tests.support.live_server import live_server
from tests.support.scripted_server import Reply, Script, completion, scripted_server

OLD = "".join(f"value_{n} = {n}\n" for n in range(1, 21))
NOTHING = completion(json.dumps({"issues": []}))


def edited(n: int) -> str:
    return OLD.replace(f"value_{n} = {n}\n", f"value_{n} = compute({n})\n")


def one_finding(line: int = 4) -> list[Reply]:
    issue = {"line": line, "side": "new", "title": "Risky", "review": "This evaluates input."}
    return [
        completion(json.dumps({"issues": [issue]})),  # find
        completion(json.dumps({"issue_type": "major"})),  # rate
        completion(json.dumps({"explanation": "It runs what it is given."})),  # explain
    ]


@dataclass
class OnGitLab:
    fake: FakeGitLab
    url: str
    engine: sa.Engine
    project_id: int

    def merge_request(self, changes: list[FileChange]) -> FakeMR:
        return self.fake.add_merge_request(
            self.fake.projects[0], changes, author=self.fake.users["alice-token"]
        )

    def run(
        self,
        mr: FakeMR,
        script: Script,
        forge: Callable[[Project], Any] | None = None,
        review_id: int | None = None,
        **settings: Any,
    ) -> Review:
        """Run the job for ``mr``'s head (a new review row unless ``review_id``, a retry); the row after."""
        if review_id is None:
            review_id = add_review(self.engine, self.project_id, mr.iid, mr.sha)
        with scripted_server(script) as student:
            config = load_settings(
                student_base_url=student, student_model="scripted", llm_max_retries=0, **settings
            )
            run_review_job(
                review_id,
                config,
                self.engine,
                forge or (lambda p: GitLabForge(self.url, "bot-token", p.path)),
            )
        return review_row(self.engine, review_id)

    def bot_notes(self, mr: FakeMR) -> list[Note]:
        return [note for _, note in mr.notes() if note.author.username == "reviewbot"]


def add_review(engine: sa.Engine, project_id: int, number: int, head: str) -> int:
    with session_scope(engine) as session:
        row = Review(project_id=project_id, mr_number=number, head_sha=head)
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


def review_row(engine: sa.Engine, review_id: int) -> Review:
    with Session(engine) as session:
        row = session.get(Review, review_id)
    assert row is not None
    return row


def findings_of(engine: sa.Engine, review_id: int) -> list[Finding]:
    with Session(engine) as session:
        return list(session.exec(select(Finding).where(Finding.review_id == review_id)).all())


def add_project(engine: sa.Engine, forge: str, url: str, path: str) -> int:
    with session_scope(engine) as session:
        project = Project(forge=forge, forge_url=url, path=path, webhook_secret="s",
                          bot_username="reviewbot", severity_threshold="trivial")  # fmt: skip
        session.add(project)
        session.flush()
        assert project.id is not None
        return project.id


@pytest.fixture
def gitlab(engine: sa.Engine) -> Iterator[OnGitLab]:
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    fake.add_user("alice", "alice-token")
    fake.add_project("group/app")
    with live_server(fake.app) as url:
        yield OnGitLab(fake, url, engine, add_project(engine, "gitlab", url, "group/app"))


def asked_about(script: Script) -> list[str]:
    """The files the scripted student was asked to find issues in."""
    return sorted(p for r in script.requests for p in re.findall(r"\bm\d\.py", r["messages"][1]["content"]))


def summary_of(notes: list[Note]) -> str:
    (summary,) = [n.body for n in notes if parse_marker(n.body) == ("summary", None)]
    return summary


SIX_FILES = [change(f"m{n}.py", OLD, edited(n)) for n in range(1, 7)]


def test_the_call_limit_lists_what_is_left_and_the_next_push_reviews_it(gitlab: OnGitLab) -> None:
    mr = gitlab.merge_request(SIX_FILES)
    script = Script([], default=NOTHING)
    review = gitlab.run(mr, script, review_max_calls=3)
    assert review.status == ReviewStatus.DONE
    assert len(script.requests) == 3  # one find call per file, until the limit
    assert set(review.file_digests) == {"m1.py", "m2.py", "m3.py"}  # the rest is not remembered
    assert review.error is not None
    assert "review call limit reached (3 calls)" in review.error
    summary = summary_of(gitlab.bot_notes(mr))
    assert "The review stopped early: review call limit reached (3 calls)" in summary
    for path in ("m4.py", "m5.py", "m6.py"):
        assert f"`{path}`: lines" in summary

    # The next push (same files) reviews the three it did not reach, and only them.
    gitlab.fake.push(mr, SIX_FILES)
    again = Script([], default=NOTHING)
    second = gitlab.run(mr, again)
    assert second.status == ReviewStatus.DONE
    assert asked_about(again) == ["m4.py", "m5.py", "m6.py"]
    assert set(second.file_digests) == {f"m{n}.py" for n in range(1, 7)}
    assert second.error is None


def test_the_deadline_stops_a_slow_review(gitlab: OnGitLab) -> None:
    mr = gitlab.merge_request(SIX_FILES)
    slow = Reply(body=NOTHING.body, delay_s=0.6)
    script = Script([], default=slow)
    started = time.monotonic()
    review = gitlab.run(mr, script, review_deadline_s=1.5, llm_concurrency=1)
    took = time.monotonic() - started
    assert review.status == ReviewStatus.DONE
    assert took < 1.5 + 1.5, took  # the call in flight at the deadline is cut off, not waited for
    reviewed = set(review.file_digests)
    assert 1 <= len(reviewed) < 6
    assert review.error is not None
    assert "review deadline reached (1.5 s)" in review.error
    summary = summary_of(gitlab.bot_notes(mr))
    assert "The review stopped early: review deadline reached (1.5 s)" in summary
    for n in range(1, 7):
        assert (f"m{n}.py" in reviewed) != (f"`m{n}.py`: lines" in summary)


@pytest.mark.parametrize("moved", ["pushed", "closed"])
def test_a_push_or_a_close_between_stages_stops_the_review(gitlab: OnGitLab, moved: str) -> None:
    mr = gitlab.merge_request([change("app.py", OLD, edited(4))])
    asked: list[int] = []

    class PushAfterFind(GitLabForge):
        def merge_request(self, number: int) -> MergeRequest:
            asked.append(number)
            if len(asked) == 2 and moved == "pushed":  # the check between find and rate
                gitlab.fake.push(mr, [change("app.py", OLD, edited(5))])
            elif len(asked) == 2:
                mr.state = "closed"
            return super().merge_request(number)

    script = Script(one_finding())
    review = gitlab.run(mr, script, forge=lambda p: PushAfterFind(gitlab.url, "bot-token", p.path))
    assert review.status == ReviewStatus.SUPERSEDED
    assert len(script.requests) == 1  # found, then stopped before rating
    assert gitlab.bot_notes(mr) == []
    assert gitlab.fake.writes() == []
    assert findings_of(gitlab.engine, review.id) == []  # type: ignore[arg-type]


def test_findings_are_pending_until_posted_and_a_crash_mid_post_loses_nothing(gitlab: OnGitLab) -> None:
    mr = gitlab.merge_request([change("app.py", OLD, edited(4))])
    seen: list[list[tuple[str, str | None]]] = []

    class LostAnswer(GitLabForge):
        """Posts, then loses the forge's answer (the connection drops): the comment exists."""

        def post_review(
            self, request: MergeRequest, diff: Diff, comments: list[InlineComment]
        ) -> list[PostedComment]:
            seen.append([(f.fingerprint, f.status) for f in findings_of(gitlab.engine, review_id)])  # type: ignore[misc]
            super().post_review(request, diff, comments)
            raise ForgeError("connection reset while posting", retryable=True)

    review_id = add_review(gitlab.engine, gitlab.project_id, mr.iid, mr.sha)
    with pytest.raises(ForgeError):
        gitlab.run(mr, Script(one_finding()), forge=lambda p: LostAnswer(gitlab.url, "bot-token", p.path),
                   review_id=review_id)  # fmt: skip
    ((fingerprint, status),) = seen[0]
    assert status == FindingStatus.PENDING  # recorded before the post
    (row,) = findings_of(gitlab.engine, review_id)
    assert (row.status, row.forge_comment_id) == (FindingStatus.PENDING, None)
    (posted,) = gitlab.bot_notes(mr)

    # The queue's retry of the same review: the comment is found by its fingerprint, not posted
    # again, and the pending row gets its ids.
    retried = gitlab.run(mr, Script(one_finding()), review_id=review_id)
    assert retried.status == ReviewStatus.DONE
    (row,) = findings_of(gitlab.engine, review_id)
    assert row.fingerprint == fingerprint
    assert row.status == FindingStatus.POSTED
    assert row.forge_comment_id == str(posted.id)
    assert row.forge_thread_id is not None
    kinds = [parse_marker(n.body)[0] for n in gitlab.bot_notes(mr)]  # type: ignore[index]
    assert kinds == ["finding", "summary"]


def test_a_path_longer_than_its_column_is_stored_cut(gitlab: OnGitLab) -> None:
    path = "/".join(["d" * 200] * 6) + "/app.py"  # 1,213 characters: over Finding.path's 1,024
    mr = gitlab.merge_request([change(path, OLD, edited(4))])
    review = gitlab.run(mr, Script(one_finding()))
    assert review.status == ReviewStatus.DONE, review.error
    (row,) = findings_of(gitlab.engine, review.id)  # type: ignore[arg-type]
    assert row.path == path[:1024]
    assert row.status == FindingStatus.POSTED
    assert row.forge_comment_id is not None

    # A push that keeps its line: the finding is not taken for addressed by its cut path.
    gitlab.fake.push(mr, [change(path, OLD, edited(4).replace("value_9 = 9", "value_9 = 0"))])
    again = gitlab.run(mr, Script(one_finding()))
    assert again.status == ReviewStatus.DONE, again.error
    with Session(gitlab.engine) as session:
        assert session.exec(select(Feedback).where(Feedback.finding_id == row.id)).all() == []


VENDORED = 1_500


def test_a_summary_of_1500_vendored_files_fits_gitlab(gitlab: OnGitLab) -> None:
    vendored = [change(f"vendor/lib{n}/{'x' * 200}.go", "a\n", "b\n") for n in range(VENDORED)]
    mr = gitlab.merge_request([change("app.py", OLD, edited(4)), *vendored])
    review = gitlab.run(mr, Script([], default=NOTHING))
    assert review.status == ReviewStatus.DONE, review.error
    summary = summary_of(gitlab.bot_notes(mr))
    assert_collapsed(summary, BODY_LIMITS[ForgeKind.GITLAB])


def assert_collapsed(summary: str, limit: int) -> None:
    assert len(summary) <= limit
    assert f"<details><summary>Not reviewed ({VENDORED:,})</summary>" in summary
    assert "more files" in summary
    assert "truncated" not in summary  # collapsed, not cut
    assert parse_marker(summary) == ("summary", None)


def test_a_summary_of_1500_vendored_files_fits_github(engine: sa.Engine) -> None:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    files = [SeedFile(f"vendor/lib{n}/{'x' * 200}.go", old="a\n", new="b\n") for n in range(VENDORED)]
    fake.add_pull("o/r", 7, [SeedFile("app.py", old=OLD, new=edited(4)), *files])
    with live_server(fake.app) as url:
        project_id = add_project(engine, "github", url, "o/r")
        review_id = add_review(engine, project_id, 7, "b" * 40)
        with scripted_server(Script([], default=NOTHING)) as student:
            settings = load_settings(student_base_url=student, student_model="scripted", llm_max_retries=0)
            forge = lambda p: GitHubForge(url, p.path, token="bot-token", seconds_between_writes=0)  # noqa: E731
            status = run_review_job(review_id, settings, engine, forge)
    assert status == ReviewStatus.DONE, review_row(engine, review_id).error
    (summary,) = [c.body for c in fake.issue_comments.values() if c.user == "reviewbot"]
    assert_collapsed(summary, BODY_LIMITS[ForgeKind.GITHUB])  # 65,536
