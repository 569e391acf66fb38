"""A project on a fake forge whose merge requests are reviewed for real (the review job, the
intake's signal path, the roles job's lookups) by a student that answers by what it is asked: for
tests and benchmarks of what reviewers see (comments, the summary, the gate, the cap, suppression)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.config import Settings, load_settings
from bot.events import Signal, SignalKind
from bot.feedback.roles import RoleCache, resolve_roles
from bot.feedback.signals import apply_signal, stage_follow_ups
from bot.forges.base import Forge, parse_marker
from bot.forges.github import GitHubForge
from bot.forges.gitlab import GitLabForge
from bot.models import Finding, Project, Review, ReviewStatus
from bot.review.job import run_review_job
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fake_gitlab import FakeGitLab, User, change
from tests.support.live_server import live_server
from tests.support.scripted_server import Reply, Script, completion, scripted_server

# What the student finds, by a marker in the changed code: (title, review, severity, confidence).
# The nit recurs on every merge request, worded a little differently each time, as a model does.
NIT_WORDINGS = [
    ("Debug print left in code", "Remove the debug print statement before merging."),
    ("Leftover debug print", "This debug print statement should be removed before merging."),
    ("Debug print statement", "Remove this leftover debug print before merging."),
    ("Remove debug print", "A debug print statement is left in the code; remove it before merging."),
]
ISSUES = {
    "print(": ("Debug print left in code", "Remove the debug print statement before merging.",
               "trivial", 0.9),
    "execute(": ("SQL injection", "The query is built from user input with an f-string; use parameters.",
                 "critical", 0.95),
    "eval(": ("Arbitrary code execution", "eval() runs whatever the request sends.", "critical", 0.6),
    "timeout=None": ("No timeout on the HTTP call", "A hung server blocks this worker forever.",
                     "major", 0.8),
    "except:": ("Bare except", "A bare except hides every error, KeyboardInterrupt included.", "minor", 0.7),
}  # fmt: skip


class Student(Script):
    """Answers each call by its kind and what the prompt holds: a find call lists an issue per
    changed line with a marker of ``ISSUES``, a rate call rates it (with a log-probability, as vLLM
    gives), an explain call explains it. ``nit`` picks the nit's wording."""

    def __init__(self, nit: int = 0) -> None:
        super().__init__(replies=[])
        self.nit = nit

    def next_reply(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(request)
        kind = request["response_format"]["json_schema"]["name"]
        prompt = "\n".join(str(m.get("content")) for m in request["messages"])
        if kind == "FindAnswer":
            issues = []
            for line in re.findall(r"^\s*(\d+) \+(.*)$", prompt, re.MULTILINE):
                for marker, (title, review, _, _) in ISSUES.items():
                    if marker in line[1]:
                        if marker == "print(":
                            title, review = NIT_WORDINGS[self.nit % len(NIT_WORDINGS)]
                        issues.append({"line": int(line[0]), "side": "new", "title": title, "review": review})
            return completion(json.dumps({"issues": issues}))
        if kind == "RateAnswer":
            rating = next(
                (sev, conf) for _, (title, review, sev, conf) in ISSUES.items()
                if review in prompt or (sev == "trivial" and "debug print" in prompt.lower())
            )  # fmt: skip
            reply = completion(json.dumps({"issue_type": rating[0]}))
            token = {"token": rating[0], "logprob": math.log(rating[1]), "bytes": None, "top_logprobs": []}
            reply.body["choices"][0]["logprobs"] = {"content": [token]}
            return reply
        return completion(json.dumps({"explanation": "It matters here because <b>@all</b>\n/approve"}))


@dataclass
class Site:
    """A project on one fake forge, with reviewers: ``bob`` (a developer: trusted) and ``gus`` (a
    guest: his signals label nothing); merge requests are added one by one and reviewed for real."""

    kind: str
    engine: sa.Engine
    url: str
    gitlab: FakeGitLab | None = None
    github: FakeGitHub | None = None
    project_id: int = 0
    heads: dict[int, str] = field(default_factory=dict)
    _users: dict[str, User] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "group/app" if self.kind == "gitlab" else "o/r"

    def forge(self, project: Project) -> Forge:
        if self.kind == "gitlab":
            return GitLabForge(self.url, "bot-token", project.path)
        return GitHubForge(self.url, project.path, token="bot-token", seconds_between_writes=0)

    def project(self, **values: Any) -> None:
        with session_scope(self.engine) as session:
            row = session.get(Project, self.project_id)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)
            session.add(row)

    def project_row(self) -> Project:
        with Session(self.engine) as session:
            row = session.get(Project, self.project_id)
        assert row is not None
        return row

    def open_mr(self, files: dict[str, str]) -> int:
        """A merge request adding ``files`` (path -> new text)."""
        if self.gitlab is not None:
            project = self.gitlab.projects[0]
            changes = [change(path, "", text) for path, text in files.items()]
            mr = self.gitlab.add_merge_request(project, changes, author=self._users["alice"])
            self.heads[mr.iid] = mr.sha
            return mr.iid
        assert self.github is not None
        number = len(self.heads) + 1
        head = f"{number:x}" * 40
        seeds = [SeedFile(path, old="", new=text) for path, text in files.items()]
        self.github.add_pull("o/r", number, seeds, head_sha=head[:40], base_sha="a" * 40)
        self.heads[number] = head[:40]
        return number

    def review(self, number: int, student: Script | None = None, **settings: Any) -> Review:
        """Queue and run the review of merge request ``number``'s head."""
        with session_scope(self.engine) as session:
            row = Review(project_id=self.project_id, mr_number=number, head_sha=self.heads[number])
            session.add(row)
            session.flush()
            review_id = row.id
        assert review_id is not None
        with scripted_server(student or Student()) as url:
            run_review_job(review_id, self.settings(url, **settings), self.engine, self.forge)
        with Session(self.engine) as session:
            done = session.get(Review, review_id)
        assert done is not None
        assert done.status == ReviewStatus.DONE, done.error
        return done

    def settings(self, student: str = "http://127.0.0.1:9", **values: Any) -> Settings:
        return load_settings(student_base_url=student, student_model="scripted", llm_max_retries=0, **values)

    def bodies(self, number: int) -> list[str]:
        if self.gitlab is not None:
            mr = self.gitlab.projects[0].merge_requests[number]
            return [note.body for _, note in mr.notes() if note.author.username == "reviewbot"]
        assert self.github is not None
        gh = self.github
        inline = [c.body for c in gh.review_comments.values() if c.user == "reviewbot" and c.pr == number]
        return inline + [
            c.body for c in gh.issue_comments.values() if c.user == "reviewbot" and c.pr == number
        ]

    def comments(self, number: int) -> list[str]:
        return [b for b in self.bodies(number) if (parse_marker(b) or ("",))[0] == "finding"]

    def summary(self, number: int) -> str | None:
        found = [b for b in self.bodies(number) if parse_marker(b) == ("summary", None)]
        assert len(found) <= 1
        return found[0] if found else None

    def statuses(self, number: int) -> list[dict[str, Any]]:
        if self.gitlab is not None:
            return self.gitlab.statuses_of(self.path, self.heads[number])
        assert self.github is not None
        return self.github.statuses_of(self.path, self.heads[number])

    def finding(self, number: int, title_part: str) -> Finding:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Finding)
                .join(Review, col(Finding.review_id) == col(Review.id))
                .where(col(Review.mr_number) == number, col(Review.project_id) == self.project_id)
                .order_by(col(Finding.id).desc())
            ).all()
        return next(row for row in rows if title_part.lower() in row.title.lower())

    def command(self, finding: Finding, author: str, kind: SignalKind, value: str = "") -> None:
        """A reviewer's reply to the finding's comment, recorded as the intake records it (with its
        follow-up jobs), and its author's role read from the forge as the roles job reads it."""
        signal = Signal(
            kind, value, author, f"reply:{author}:{finding.id}:{kind}",
            comment_id=finding.forge_comment_id, reply_id="1",
        )  # fmt: skip
        with Session(self.engine) as session:
            applied = apply_signal(session, self.project_id, signal)
            assert applied is not None
            stage_follow_ups(session, self.project_id, applied[0], signal, applied[1])
            project = session.get(Project, self.project_id)
            assert project is not None
            resolve_roles(session, self.project_id, self.forge(project).member_role, RoleCache())
            session.commit()


def _add_project(engine: sa.Engine, forge: str, url: str, path: str) -> int:
    with session_scope(engine) as session:
        project = Project(forge=forge, forge_url=url, path=path, webhook_secret="s",
                          bot_username="reviewbot", severity_threshold="trivial")  # fmt: skip
        session.add(project)
        session.flush()
        assert project.id is not None
        return project.id


SERVICE = "import requests\n\ndef fetch(url):\n    return requests.get(url, timeout=None)\n"
QUERY = (
    "def find(db, name):\n    print(name)\n    return db.execute(f\"select * from t where n = '{name}'\")\n"
)


@contextmanager
def open_site(kind: str, engine: sa.Engine) -> Iterator[Site]:
    """A project on a fake ``kind`` forge (gitlab or github), served over HTTP, with its reviewers."""
    if kind == "gitlab":
        fake = FakeGitLab()
        fake.add_user("reviewbot", "bot-token")
        users = {name: fake.add_user(name, f"{name}-token") for name in ("alice", "bob", "gus")}
        project = fake.add_project("group/app")
        fake.add_member(project, users["alice"], 30)
        fake.add_member(project, users["bob"], 30)
        fake.add_member(project, users["gus"], 10)
        with live_server(fake.app) as url:
            site = Site("gitlab", engine, url, gitlab=fake, _users=users)
            site.project_id = _add_project(engine, "gitlab", url, site.path)
            yield site
        return
    github = FakeGitHub()
    github.add_user("reviewbot", token="bot-token")
    github.add_repo("o/r")
    github.add_collaborator("o/r", "alice", "write")
    github.add_collaborator("o/r", "bob", "write")
    with live_server(github.app) as url:  # gus reads only, as anyone may on a public repository
        site = Site("github", engine, url, github=github)
        site.project_id = _add_project(engine, "github", url, site.path)
        yield site


SERVICE = "import requests\n\ndef fetch(url):\n    return requests.get(url, timeout=None)\n"
QUERY = (
    "def find(db, name):\n    print(name)\n    return db.execute(f\"select * from t where n = '{name}'\")\n"
)


def nit_file(n: int) -> dict[str, str]:
    return {f"svc/m{n}.py": f"def handler_{n}(order):\n    print(order.total_{n})\n    return order\n"}


def run_recurring_nit(site: Site, merge_requests: int, dismiss: bool) -> list[int]:
    """Merge requests with the same nit (worded differently each time); a trusted reviewer dismisses
    it on the first when ``dismiss``. Returns the inline comments each merge request got."""
    counts = []
    for n in range(merge_requests):
        number = site.open_mr(nit_file(n) | ({"svc/client.py": SERVICE} if n % 2 else {}))
        site.review(number, Student(nit=n))
        counts.append(len(site.comments(number)))
        if n == 0 and dismiss:
            site.command(site.finding(number, "debug print"), "bob", SignalKind.DISMISS, "we log via print")
    return counts
