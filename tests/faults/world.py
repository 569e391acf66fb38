"""What every fault test stands on: a database and a queue (SQLite files, or a PostgreSQL and a Redis
of the test's own), a fake GitLab served on a real port that logs when each request came, a model
server that answers every review call (slowly when asked, so a fault lands mid-review), one project,
and the count each test ends with: reviews completed, duplicate comments, stuck and lost reviews."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session, select

from bot import db
from bot.forges.base import parse_marker
from bot.models import Review, ReviewStatus
from bot.outbox import Job, stage
from tests.support.db import session_scope
from tests.support.fake_gitlab import FakeGitLab, MergeRequest, change
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.processes import Postgres, Redis, reviewbot_env
from tests.support.scripted_server import Reply, Script, completion, scripted_server
from tests.support.secrets import SECRET_KEY, project_row

SECRET = "fault-secret"
PATH = "group/app"
MR_OPENED = FIXTURES / "gitlab" / "webhooks" / "merge_request.open.json"
BOT_TOKEN = "bot-token"
TOKEN_ENV = "REVIEWBOT_TOKEN_FAULTS"
OLD = "".join(f"def handler_{i}(request):\n    return respond(request, {i})\n\n" for i in range(30))
TERMINAL = {ReviewStatus.DONE, ReviewStatus.FAILED, ReviewStatus.SUPERSEDED}
_ADDED = re.compile(r"^\s*(\d+) \+", re.MULTILINE)


def wall_time(when: datetime) -> float:
    """Seconds since the epoch of a stored time (SQLite gives UTC back without its zone)."""
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass
class ReviewingModel(Script):
    """A student that answers by the schema each call asks for: every added line of a chunk is an
    issue (the same words each time, so a second run finds the same fingerprints), rated major and
    explained. Find calls wait ``find_delay_s`` (or, for a file named in ``slow_files``, that
    file's delay), so a review stays in flight long enough to be hit."""

    find_delay_s: float = 0.0
    slow_files: dict[str, float] = field(default_factory=dict)  # file name -> its find calls' delay
    times: list[float] = field(default_factory=list)  # wall time of each request, in order

    def next_reply(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(request)
            self.times.append(time.time())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        schema = request.get("response_format", {}).get("json_schema", {}).get("name")
        if schema == "FindAnswer":
            code = request["messages"][-1]["content"]
            lines = [int(n) for n in _ADDED.findall(code)][:5]
            issues = [
                {"line": n, "side": "new", "title": "risky call", "review": f"line {n} trusts its input"}
                for n in lines
            ]
            reply = completion(json.dumps({"issues": issues}))
            named = [delay for name, delay in self.slow_files.items() if f"\n{name}\n" in code]
            reply.delay_s = named[0] if named else self.find_delay_s
            return reply
        if schema == "RateAnswer":
            return completion(json.dumps({"issue_type": "major"}))
        if schema == "ExplainAnswer":
            return completion(json.dumps({"explanation": "Input reaches it unchecked."}))
        return Reply(400, {"error": f"the fault tests' model does not answer {schema!r}"})

    def find_calls(self, path: str | None = None) -> list[float]:
        """When each find call (of the file ``path``, when given) came in."""
        with self.lock:
            return [
                at
                for at, request in zip(self.times, self.requests, strict=True)
                if request.get("response_format", {}).get("json_schema", {}).get("name") == "FindAnswer"
                and (path is None or f"\n{path}\n" in request["messages"][-1]["content"])
            ]


@dataclass
class Request:
    at: float  # wall time it arrived
    method: str
    path: str
    status: int | None = None  # None while it is being answered
    token: str | None = None  # the PRIVATE-TOKEN it carried: which of the bot's tokens, so which worker


class TimedLog:
    """ASGI middleware in front of the fake forge: every request with when it came and its answer;
    ``slow`` holds some requests before they are answered, so a fault lands between two steps."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[Request] = []
        self._delays: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def slow(self, method: str, pattern: str, seconds: float) -> None:
        self._delays.append((method, pattern, seconds))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = dict(scope["headers"]).get(b"private-token", b"").decode() or None
        request = Request(time.time(), scope["method"], scope["path"], token=token)
        with self._lock:
            self.requests.append(request)
        for method, pattern, seconds in self._delays:
            if method == request.method and re.search(pattern, request.path):
                await asyncio.sleep(seconds)

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)

        await self.app(scope, receive, recording_send)

    def matching(self, method: str, pattern: str, *, answered: bool | None = None) -> list[Request]:
        """The requests of ``method`` whose path matches ``pattern`` (answered or not, when given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method
                and re.search(pattern, r.path)
                and (answered is None or (r.status is not None) == answered)
            ]


@dataclass
class Tally:
    """The count a fault test ends with; ``line`` is what the suite prints for the lead to quote."""

    test: str
    faults: int
    completed: int
    duplicates: int
    stuck: int
    lost: int
    failed: int = 0

    def line(self) -> str:
        return (
            f"{self.test}: faults injected {self.faults}, reviews completed {self.completed}, "
            f"failed with a reason {self.failed}, duplicates {self.duplicates}, stuck {self.stuck}, "
            f"lost {self.lost}"
        )


@dataclass
class World:
    backend: str  # "sqlite" (SQLite database + SQLite queue) or "postgres-redis"
    database_url: str
    queue_url: str
    engine: sa.Engine
    fake: FakeGitLab
    forge_url: str
    forge_log: TimedLog
    model: ReviewingModel
    model_url: str
    log_dir: Path
    postgres: Postgres | None = None  # the backend's own servers, to stop and start
    redis: Redis | None = None
    project_id: int = 0
    tallies: list[Tally] = field(default_factory=list)

    def add_project(self) -> None:
        with session_scope(self.engine) as session:
            project = project_row(
                SECRET, forge="gitlab", forge_url=self.forge_url, path=PATH, token_env=TOKEN_ENV,
                bot_username="reviewbot", severity_threshold="trivial",
            )  # fmt: skip
            session.add(project)
            session.flush()
            assert project.id is not None
            self.project_id = project.id

    def env(self, **settings: str) -> dict[str, str]:
        """A reviewbot process's environment for this world (``settings`` override its defaults)."""
        defaults = {
            "database_url": self.database_url,
            "queue_url": self.queue_url,
            "secret_key": SECRET_KEY,
            "student_base_url": self.model_url,
            "student_model": "scripted",
            "llm_max_retries": "0",
            "period_scale": "0.1",  # the periodic jobs come ten times as often: the stale sweep every 6 s
        }
        env = reviewbot_env(**{**defaults, **settings})
        env[TOKEN_ENV] = BOT_TOKEN
        return env

    def add_merge_request(self, changed: tuple[int, ...] = (4, 17), path: str = "app.py") -> MergeRequest:
        """An MR changing ``path`` in the handlers numbered ``changed``."""
        new = OLD
        for n in changed:
            new = new.replace(f"respond(request, {n})", f"respond(eval(request.body), {n})")
        author = self.fake.users["alice-token"]
        return self.fake.add_merge_request(self.fake.projects[0], [change(path, OLD, new)], author=author)

    def add_review(self, mr: MergeRequest) -> int:
        """A review of ``mr``'s head and its job in the outbox, one transaction, as the intake records
        them; the next reviewbot process to start relays the job to the queue."""
        with session_scope(self.engine) as session:
            review = Review(project_id=self.project_id, mr_number=mr.iid, head_sha=mr.sha)
            session.add(review)
            session.flush()
            assert review.id is not None
            stage(session, Job.REVIEW, review.id)
            return review.id

    def review(self, review_id: int) -> Review:
        with Session(self.engine) as session:
            row = session.get(Review, review_id)
            assert row is not None
            return row

    def reviews(self) -> list[Review]:
        with Session(self.engine) as session:
            return list(session.exec(select(Review).order_by(sa.column("id"))).all())

    def done_reviews_of(self, mr: MergeRequest) -> int:
        """DONE reviews of ``mr``'s head."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Review).where(
                    Review.project_id == self.project_id,
                    Review.mr_number == mr.iid,
                    Review.head_sha == mr.sha,
                    Review.status == ReviewStatus.DONE,
                )
            ).all()
        return len(rows)

    def settled(self) -> bool:
        """Every review done, failed or superseded."""
        return all(r.status in TERMINAL for r in self.reviews())

    def bot_markers(self, mr: MergeRequest) -> list[tuple[str, str | None]]:
        return [
            marker
            for _, note in mr.notes()
            if note.author.username == "reviewbot" and (marker := parse_marker(note.body)) is not None
        ]

    def tally(
        self,
        test: str,
        faults: int,
        reviewed: list[MergeRequest],
        failing: tuple[MergeRequest, ...] = (),
    ) -> Tally:
        """Count: DONE reviews; comments posted twice (a finding's fingerprint, or a second summary);
        reviews not settled, or settled as failed/superseded without a reason; and heads of
        ``reviewed`` with no DONE review (of ``failing``, with no FAILED one), which are lost."""
        rows = self.reviews()
        by_head: dict[tuple[int, str], Counter[str]] = {}
        for row in rows:
            by_head.setdefault((row.mr_number, row.head_sha), Counter())[row.status] += 1
        duplicates = 0
        for mr in self.fake.projects[0].merge_requests.values():
            markers = self.bot_markers(mr)
            findings = [fp for kind, fp in markers if kind == "finding"]
            duplicates += len(findings) - len(set(findings))
            duplicates += max(0, sum(1 for kind, _ in markers if kind == "summary") - 1)
        stuck = sum(
            1 for r in rows if r.status not in TERMINAL or (r.status != ReviewStatus.DONE and not r.error)
        )
        lost = sum(1 for mr in reviewed if not by_head.get((mr.iid, mr.sha), Counter())[ReviewStatus.DONE])
        lost += sum(1 for mr in failing if not by_head.get((mr.iid, mr.sha), Counter())[ReviewStatus.FAILED])
        tally = Tally(
            test=f"{test}[{self.backend}]",
            faults=faults,
            completed=sum(1 for r in rows if r.status == ReviewStatus.DONE),
            failed=sum(1 for r in rows if r.status == ReviewStatus.FAILED and r.error),
            duplicates=duplicates,
            stuck=stuck,
            lost=lost,
        )
        self.tallies.append(tally)
        return tally


@contextmanager
def open_world(backend: str, database_url: str, queue_url: str, log_dir: Path) -> Iterator[World]:
    """A world on ``database_url`` (migrated here) and ``queue_url``: a fake GitLab holding the
    project and a model server, each on a real port, and the project recorded; the processes' logs
    go to ``log_dir``."""
    with ExitStack() as stack:
        engine = db.make_engine(database_url)
        stack.callback(engine.dispose)
        db.upgrade(engine)
        fake = FakeGitLab()
        fake.add_user("reviewbot", BOT_TOKEN)
        fake.add_user("alice", "alice-token")
        fake.add_project(PATH)
        forge_log = TimedLog(fake.app)
        model = ReviewingModel(replies=[])
        forge_url = stack.enter_context(live_server(forge_log))
        model_url = stack.enter_context(scripted_server(model))
        log_dir.mkdir(exist_ok=True)
        world = World(
            backend, database_url, queue_url, engine, fake, forge_url, forge_log, model, model_url, log_dir
        )
        world.add_project()
        yield world


def delivery(mr: MergeRequest) -> tuple[str, bytes, dict[str, str]]:
    payload: dict[str, Any] = json.loads(MR_OPENED.read_text())
    payload["project"]["path_with_namespace"] = PATH
    payload["user"]["username"] = "alice"
    attributes = payload["object_attributes"]
    attributes.update(iid=mr.iid, action="open", last_commit={**attributes["last_commit"], "id": mr.sha})
    key = str(uuid.uuid4())
    headers = {
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event-UUID": key,
        "Content-Type": "application/json",
    }
    return key, json.dumps(payload).encode(), headers


def send(url: str, body: bytes, headers: dict[str, str]) -> int:
    """The status the forge sees; 599 when the connection itself failed (it would retry too)."""
    try:
        return httpx.post(f"{url}/webhooks/gitlab", content=body, headers=headers, timeout=30).status_code
    except httpx.HTTPError:
        return 599
