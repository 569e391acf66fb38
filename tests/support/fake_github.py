"""A stateful fake of GitHub's REST API (and the two GraphQL operations the bot uses), for PyGithub.

A test double of an external service: serve ``FakeGitHub().app`` with ``tests.support.live_server``
and point the client's ``base_url`` at it. It enforces the rules the bot must respect:

- a review is all or nothing: one comment anchored off the diff (a line not in a hunk of that file
  on that side: ``422 Line could not be resolved``; a path not in the pull request: ``Path could
  not be resolved``) fails it and stores nothing; ``event: COMMENT`` needs a body; ``commit_id``
  must be the head;
- lists are paginated with ``per_page``/``page`` and a ``Link`` header, and ``pulls/{n}/files``
  stops at ``max_files`` (3000 like GitHub);
- tokens map to users (unknown: 401); an App authenticates with a JWT (any signature is accepted)
  and gets installation tokens for its ``slug[bot]`` user, which ``GET /user`` refuses like GitHub;
- more than ``secondary_limit`` content-creating requests in a minute answer 403 secondary rate limit;
- ``fail()`` makes the next requests to a path answer 429, 5xx or 403 secondary rate limit;
- a collaborator's permission is what ``add_collaborator`` gave; any other user reads (a public
  repository; a private one, ``add_repo(private=True)``, is 404 to them); reactions are listed with
  their users;
- a classic token (``add_user(..., scopes=[...])``) gets its scopes in ``X-OAuth-Scopes`` on every
  answer, a fine-grained one (the default) none; ``GET /repos/o/r`` has the user's ``permissions``;
- repository files at a commit (``put_file``) through the contents API: ``ref`` names the commit,
  the content comes base64-encoded in lines (none past 1 MB, as on GitHub), a folder is a list, and
  anything else is 404;
- labels on a pull request (``labels_of``): ``POST /repos/o/r/issues/N/labels`` adds to those there;
- repository webhooks (``hooks``) are listed, created and edited by admins only (403 otherwise);
- commit statuses (``statuses_of``): ``POST /repos/o/r/statuses/SHA`` on a commit the repository
  knows (a pull request's head or base, now or before a push, a ``put_file`` commit, one added to
  ``commits``; else 422 ``No commit found``), with GitHub's states (``failed`` is not one) and a
  description of at most 140 characters (422 otherwise); GitHub keeps every status, repeats too;
- web addresses (``html_url``) are served at the fake's own root, as GitHub Enterprise Server serves
  its pages at its host's root.

One rule of its own, stricter than GitHub: a review comment with the legacy ``position`` is refused.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import itertools
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
_WRITES = {"POST", "PATCH", "PUT", "DELETE"}
_STAMP = "2024-05-01T12:00:00Z"
_HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class SeedFile:
    """A changed file of a seeded pull request: ``old`` None means added, ``new`` None removed."""

    path: str
    old: str | None = None
    new: str | None = None
    previous_path: str | None = None  # renamed from
    binary: bool = False  # GitHub sends no patch and counts no lines
    too_large: bool = False  # GitHub counts the lines but sends no patch


@dataclass
class PullRequest:
    repo: str
    number: int
    title: str
    author: str
    head_sha: str
    base_sha: str
    state: str = "open"
    draft: bool = False
    merged: bool = False
    files: list[dict[str, Any]] = field(default_factory=list)  # the files list entries, as GitHub sends
    anchors: dict[str, dict[str, set[int]]] = field(default_factory=dict)  # path -> LEFT/RIGHT -> lines
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # moved by ``push``


@dataclass
class ReviewComment:
    id: int
    repo: str
    pr: int
    review_id: int | None
    path: str
    line: int | None
    side: str | None
    subject_type: str
    body: str
    user: str
    commit_id: str
    in_reply_to_id: int | None = None
    reactions: list[tuple[str, str]] = field(default_factory=list)  # (login, content), oldest first


@dataclass
class IssueComment:
    id: int
    repo: str
    pr: int
    body: str
    user: str
    reactions: list[tuple[str, str]] = field(default_factory=list)  # (login, content), oldest first


@dataclass
class Failure:
    path: str
    method: str | None
    status: int
    remaining: int
    headers: dict[str, str]
    message: str


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any  # the JSON body, None without one


class FakeGitHub:
    def __init__(self, *, secondary_limit: int = 80, max_files: int = 3000, graphql_page: int = 100) -> None:
        self.secondary_limit = secondary_limit
        self.max_files = max_files
        self.graphql_page = graphql_page
        self.requests: list[Recorded] = []
        self.users: dict[str, str] = {}  # login -> type ("User" or "Bot")
        self.permissions: dict[tuple[str, str], str] = {}  # (repo, login) -> role name; others read
        self.tokens: dict[str, str] = {}  # token -> login
        self.scopes: dict[str, list[str]] = {}  # a classic token -> its scopes (fine-grained: absent)
        self.repos: dict[str, bool] = {}  # repository -> private, besides those known by their pulls
        self.hooks: dict[int, dict[str, Any]] = {}  # hook id -> the hook as GitHub shows it, its repo kept
        self.apps: dict[str, tuple[str, set[int]]] = {}  # app id -> (slug, installation ids)
        self.installed: dict[int, list[str]] = {}  # installation id -> its repositories (``install``)
        self.pulls: dict[tuple[str, int], PullRequest] = {}
        self.reviews: list[dict[str, Any]] = []
        self.review_comments: dict[int, ReviewComment] = {}
        self.issue_comments: dict[int, IssueComment] = {}
        self.resolved: set[int] = set()  # root review comment ids of resolved threads
        self.files: dict[tuple[str, str, str], bytes] = {}  # (repository, commit, path) -> content
        self.labels: dict[tuple[str, int], list[str]] = {}  # (repository, number) -> labels, in order
        self.commits: set[tuple[str, str]] = set()  # (repository, sha) of every head and base seen
        self.statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (repository, sha) -> in order
        self.not_modified = 0  # conditional requests answered 304
        self._failures: list[Failure] = []
        self._writes: deque[float] = deque()
        self._ids = itertools.count(1001)
        self.app = self._build_app()

    # --- seeding ---

    def add_user(self, login: str, token: str | None = None, *, scopes: list[str] | None = None) -> str:
        """A user; ``token`` authenticates as them, a classic token with ``scopes``, else fine-grained."""
        self.users[login] = "User"
        if token is not None:
            self.tokens[token] = login
            if scopes is not None:
                self.scopes[token] = scopes
        return login

    def add_repo(self, repo: str, *, private: bool = False) -> str:
        self.repos[repo] = private
        return repo

    def add_collaborator(self, repo: str, login: str, role: str) -> str:
        """``login`` (added as a user) with ``role`` on ``repo``: read, triage, write, maintain or admin."""
        self.add_user(login)
        self.permissions[(repo, login)] = role
        return login

    def react(self, comment_id: int, login: str, content: str) -> None:
        """``login`` reacts to a review comment; GitHub keeps one reaction of each content per user."""
        reactions = self.review_comments[comment_id].reactions
        if (login, content) not in reactions:
            reactions.append((login, content))

    def unreact(self, comment_id: int, login: str, content: str) -> None:
        self.review_comments[comment_id].reactions.remove((login, content))

    def add_app(self, app_id: int, slug: str, installation_id: int) -> str:
        """Registers an App with one installation; returns its bot user's login."""
        self.apps[str(app_id)] = (slug, {installation_id})
        self.users[f"{slug}[bot]"] = "Bot"
        return f"{slug}[bot]"

    def install(self, app_id: int, installation_id: int, repos: list[str]) -> None:
        """The App gets (another) installation on ``repos``, listed by ``GET /installation/repositories``."""
        self.apps[str(app_id)][1].add(installation_id)
        self.installed[installation_id] = list(repos)

    def add_pull(
        self,
        repo: str,
        number: int,
        files: list[SeedFile],
        *,
        author: str = "alice",
        title: str = "A change",
        head_sha: str = "b" * 40,
        base_sha: str = "a" * 40,
        **state: Any,
    ) -> PullRequest:
        pr = PullRequest(repo, number, title, author, head_sha, base_sha, **state)
        self.commits |= {(repo, head_sha), (repo, base_sha)}
        for seed in files:
            entry, anchors = _file_entry(seed)
            pr.files.append(entry)
            pr.anchors[seed.path] = anchors
        self.pulls[(repo, number)] = pr
        return pr

    def push(self, repo: str, number: int, head_sha: str, files: list[SeedFile] | None = None) -> PullRequest:
        """A push to the pull request: a new head (and files, when given); its ``updated_at`` moves."""
        pr = self.pulls[(repo, number)]
        pr.head_sha, pr.updated_at = head_sha, datetime.now(UTC)
        self.commits.add((repo, head_sha))
        if files is not None:
            pr.files, pr.anchors = [], {}
            for seed in files:
                entry, anchors = _file_entry(seed)
                pr.files.append(entry)
                pr.anchors[seed.path] = anchors
        return pr

    def add_review_comment(
        self,
        repo: str,
        pr: int,
        user: str,
        body: str,
        path: str,
        line: int = 1,
        in_reply_to: int | None = None,
    ) -> int:
        """A review comment as if posted on GitHub; a reply (``in_reply_to``) joins that comment's thread."""
        comment_id = next(self._ids)
        head = self.pulls[(repo, pr)].head_sha
        self.review_comments[comment_id] = ReviewComment(
            comment_id, repo, pr, None, path, line, "RIGHT", "line", body, user, head, in_reply_to
        )
        return comment_id

    def add_issue_comment(self, repo: str, pr: int, user: str, body: str) -> int:
        comment_id = next(self._ids)
        self.issue_comments[comment_id] = IssueComment(comment_id, repo, pr, body, user)
        return comment_id

    def put_file(self, repo: str, sha: str, path: str, text: str | bytes) -> None:
        """``repo`` holds ``path`` with ``text`` at commit ``sha``."""
        self.files[(repo, sha, path)] = text.encode() if isinstance(text, str) else text

    def labels_of(self, repo: str, number: int) -> list[str]:
        return list(self.labels.get((repo, number), []))

    def statuses_of(self, repo: str, sha: str) -> list[dict[str, Any]]:
        """Every status set on commit ``sha`` of ``repo``, oldest first: its ``state``, ``context``,
        ``description`` and ``target_url`` as sent (absent ones None)."""
        return [dict(status) for status in self.statuses.get((repo, sha), [])]

    def fail(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        retry_after: int | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests to ``path`` (and ``method``, when given) answer ``status``."""
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        defaults = {403: SECONDARY_MESSAGE, 429: "Too Many Requests", 422: "Unprocessable Entity"}
        default = defaults.get(status, "Bad Gateway" if status == 502 else "Server Error")
        self._failures.append(Failure(path, method, status, times, headers, message or default))

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path == path)

    # --- the app ---

    def _build_app(self) -> FastAPI:
        app = FastAPI()  # every route async: one event loop thread, so no locks around the state

        @app.middleware("http")
        async def gatekeeper(request: Request, call_next: Any) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            self.requests.append(Recorded(request.method, request.url.path, body))
            refusal = self._failure(request) or self._secondary_limit(request)
            if refusal is not None:
                return refusal
            login = self._authenticate(request)
            if isinstance(login, Response):
                return login
            request.state.login = login
            response: Response = await call_next(request)
            scopes = self.scopes.get(request.headers.get("authorization", "").partition(" ")[2])
            if scopes is not None:
                response.headers["X-OAuth-Scopes"] = ", ".join(scopes)
            return response

        @app.get("/user")
        async def user(request: Request) -> Response:
            login = request.state.login
            if self.users[login] == "Bot":
                return _error(403, "Resource not accessible by integration")
            return JSONResponse({"login": login, "id": _user_id(login), "type": "User"})

        @app.get("/app")
        async def github_app(request: Request) -> Response:
            slug, _ = self.apps[request.state.login]
            return JSONResponse({"id": int(request.state.login), "slug": slug, "name": slug, "owner": None})

        @app.post("/app/installations/{installation_id}/access_tokens")
        async def access_token(request: Request, installation_id: int) -> Response:
            slug, installations = self.apps[request.state.login]
            if installation_id not in installations:
                return _error(404, "Not Found")
            token = f"ghs_{secrets.token_hex(12)}"
            self.tokens[token] = f"{slug}[bot]"
            expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return JSONResponse({"token": token, "expires_at": expires, "permissions": {}}, status_code=201)

        @app.get("/repos/{owner}/{name}/pulls")
        async def pulls(request: Request, owner: str, name: str) -> Response:
            if f"{owner}/{name}" not in {repo for repo, _ in self.pulls}:
                return _not_found()  # the fake knows a repository by its pull requests
            state = request.query_params.get("state", "open")
            found = [
                pr
                for (repo, _), pr in self.pulls.items()
                if repo == f"{owner}/{name}" and state in ("all", pr.state)
            ]
            if request.query_params.get("sort") == "updated":
                found.sort(key=lambda pr: pr.updated_at)
            else:  # created: by number here
                found.sort(key=lambda pr: pr.number)
            if request.query_params.get("direction", "desc") == "desc":
                found.reverse()
            return _page(request, [_pull_json(pr, _base(request)) for pr in found])

        @app.get("/repos/{owner}/{name}/pulls/{number}")
        async def pull(request: Request, owner: str, name: str, number: int) -> Response:
            pr = self.pulls.get((f"{owner}/{name}", number))
            return _not_found() if pr is None else JSONResponse(_pull_json(pr, _base(request)))

        @app.get("/repos/{owner}/{name}/pulls/{number}/files")
        async def files(request: Request, owner: str, name: str, number: int) -> Response:
            pr = self.pulls.get((f"{owner}/{name}", number))
            return _not_found() if pr is None else _page(request, pr.files[: self.max_files])

        @app.post("/repos/{owner}/{name}/pulls/{number}/reviews")
        async def create_review(request: Request, owner: str, name: str, number: int) -> Response:
            pr = self.pulls.get((f"{owner}/{name}", number))
            if pr is None:
                return _not_found()
            return self._create_review(pr, await request.json(), request.state.login)

        @app.get("/repos/{owner}/{name}/pulls/{number}/reviews/{review_id}/comments")
        async def review_comments_of(
            request: Request, owner: str, name: str, number: int, review_id: int
        ) -> Response:
            del owner, name, number  # one repository per fake; review ids are unique in it
            found = [c for c in self.review_comments.values() if c.review_id == review_id]
            return _page(request, [_review_comment_json(c, _base(request)) for c in found])

        @app.get("/repos/{owner}/{name}/pulls/{number}/comments")
        async def review_comments(request: Request, owner: str, name: str, number: int) -> Response:
            repo = f"{owner}/{name}"
            if (repo, number) not in self.pulls:
                return _not_found()
            found = [c for c in self.review_comments.values() if (c.repo, c.pr) == (repo, number)]
            page = _page(request, [_review_comment_json(c, _base(request)) for c in found])
            # GitHub's ETag: a hash of the body; If-None-Match with it gets a 304 (free of rate limit)
            etag = '"' + hashlib.sha256(bytes(page.body)).hexdigest()[:32] + '"'
            if request.headers.get("if-none-match") == etag:
                self.not_modified += 1
                return Response(status_code=304, headers={"ETag": etag})
            page.headers["ETag"] = etag
            return page

        @app.get("/repos/{owner}/{name}/pulls/comments/{comment_id}")
        async def review_comment(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.review_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            return JSONResponse(_review_comment_json(comment, _base(request)))

        @app.post("/repos/{owner}/{name}/pulls/comments/{comment_id}/reactions", status_code=201)
        async def react(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.review_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            content = (await request.json())["content"]
            if (request.state.login, content) not in comment.reactions:
                comment.reactions.append((request.state.login, content))
            return JSONResponse(
                {"id": next(self._ids), "content": content, "user": _user_json(request.state.login)}, 201
            )

        @app.get("/repos/{owner}/{name}/pulls/comments/{comment_id}/reactions")
        async def reactions(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.review_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            items = [
                {"id": index, "content": content, "user": _user_json(login), "created_at": _STAMP}
                for index, (login, content) in enumerate(comment.reactions, 1)
            ]
            return _page(request, items)

        @app.get("/repos/{owner}/{name}/collaborators/{login}/permission")
        async def permission(request: Request, owner: str, name: str, login: str) -> Response:
            del request
            if login not in self.users:
                return _error(404, f"{login} is not a user")
            role = self.permissions.get((f"{owner}/{name}", login), "read")  # a public repository
            legacy = {"maintain": "write", "triage": "read"}.get(role, role)
            return JSONResponse({"permission": legacy, "role_name": role, "user": _user_json(login)})

        @app.get("/repos/{owner}/{name}")
        async def repository(request: Request, owner: str, name: str) -> Response:
            repo = f"{owner}/{name}"
            role = self._role(repo, request.state.login)
            if role is None:
                return _not_found()
            ranks = ["read", "triage", "write", "maintain", "admin"]
            held = ranks.index(role)
            keys = {
                "pull": "read",
                "triage": "triage",
                "push": "write",
                "maintain": "maintain",
                "admin": "admin",
            }
            permissions = {key: held >= ranks.index(level) for key, level in keys.items()}
            return JSONResponse(
                {"id": _user_id(repo), "name": name, "full_name": repo, "owner": _user_json(owner),
                 "private": self.repos.get(repo, False), "url": f"{_base(request)}/repos/{repo}",
                 "html_url": f"{_base(request)}/{repo}",
                 "permissions": permissions}
            )  # fmt: skip

        @app.get("/repos/{owner}/{name}/hooks")
        async def list_hooks(request: Request, owner: str, name: str) -> Response:
            repo = f"{owner}/{name}"
            refusal = self._refuse_hooks(repo, request.state.login)
            if refusal is not None:
                return refusal
            shown = [_hook_json(h, _base(request)) for h in self.hooks.values() if h["repo"] == repo]
            return _page(request, shown)

        @app.post("/repos/{owner}/{name}/hooks", status_code=201)
        async def create_hook(request: Request, owner: str, name: str) -> Response:
            repo = f"{owner}/{name}"
            refusal = self._refuse_hooks(repo, request.state.login)
            if refusal is not None:
                return refusal
            sent = await request.json()
            if not (sent.get("config") or {}).get("url"):
                return _unprocessable("url is missing")
            unused = {"code": None, "status": "unused", "message": None}
            hook = {"id": next(self._ids), "repo": repo, "name": "web", "active": True, "events": ["push"],
                    "config": {}, "last_response": unused}  # fmt: skip
            _edit_hook(hook, sent)
            self.hooks[hook["id"]] = hook
            return JSONResponse(_hook_json(hook, _base(request)), status_code=201)

        @app.patch("/repos/{owner}/{name}/hooks/{hook_id}")
        async def edit_hook(request: Request, owner: str, name: str, hook_id: int) -> Response:
            repo = f"{owner}/{name}"
            refusal = self._refuse_hooks(repo, request.state.login)
            hook = self.hooks.get(hook_id)
            if refusal is not None or hook is None or hook["repo"] != repo:
                return refusal or _not_found()
            _edit_hook(hook, await request.json())
            return JSONResponse(_hook_json(hook, _base(request)))

        @app.post("/repos/{owner}/{name}/pulls/{number}/comments/{comment_id}/replies", status_code=201)
        async def reply(request: Request, owner: str, name: str, number: int, comment_id: int) -> Response:
            parent = self.review_comments.get(comment_id)
            if parent is None or (parent.repo, parent.pr) != (f"{owner}/{name}", number):
                return _not_found()
            if parent.in_reply_to_id is not None:
                return _error(
                    422, "Replies to replies are not supported; reply to the thread's first comment"
                )
            body = (await request.json())["body"]
            new_id = self.add_review_comment(
                parent.repo,
                number,
                request.state.login,
                body,
                parent.path,
                parent.line or 1,
                in_reply_to=comment_id,
            )
            return JSONResponse(_review_comment_json(self.review_comments[new_id], _base(request)), 201)

        @app.patch("/repos/{owner}/{name}/pulls/comments/{comment_id}")
        async def edit_review_comment(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.review_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            if comment.user != request.state.login:
                return _error(403, "You can only edit your own comments")
            comment.body = (await request.json())["body"]
            return JSONResponse(_review_comment_json(comment, _base(request)))

        @app.get("/repos/{owner}/{name}/issues/{number}/comments")
        async def issue_comments(request: Request, owner: str, name: str, number: int) -> Response:
            repo = f"{owner}/{name}"
            if (repo, number) not in self.pulls:
                return _not_found()
            found = [c for c in self.issue_comments.values() if (c.repo, c.pr) == (repo, number)]
            return _page(request, [_issue_comment_json(c, _base(request)) for c in found])

        @app.post("/repos/{owner}/{name}/issues/{number}/comments")
        async def create_issue_comment(request: Request, owner: str, name: str, number: int) -> Response:
            repo = f"{owner}/{name}"
            if (repo, number) not in self.pulls:
                return _not_found()
            body = (await request.json()).get("body") or ""
            if not body.strip():
                return _unprocessable("Body cannot be blank")
            comment = IssueComment(next(self._ids), repo, number, body, request.state.login)
            self.issue_comments[comment.id] = comment
            return JSONResponse(_issue_comment_json(comment, _base(request)), status_code=201)

        @app.post("/repos/{owner}/{name}/issues/{number}/labels")
        async def add_labels(request: Request, owner: str, name: str, number: int) -> Response:
            repo = f"{owner}/{name}"
            if (repo, number) not in self.pulls:
                return _not_found()
            sent = await request.json()
            names = sent.get("labels") if isinstance(sent, dict) else sent  # GitHub takes either
            if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= 50 for n in names):
                return _unprocessable("Invalid labels")
            held = self.labels.setdefault((repo, number), [])
            held += [n for n in dict.fromkeys(names) if n not in held]
            return JSONResponse([_label_json(repo, n, _base(request)) for n in held])

        @app.post("/repos/{owner}/{name}/statuses/{sha}", status_code=201)
        async def set_status(request: Request, owner: str, name: str, sha: str) -> Response:
            repo = f"{owner}/{name}"
            if self._role(repo, request.state.login) is None:
                return _not_found()
            if (repo, sha) not in self.commits and not any((r, c) == (repo, sha) for r, c, _ in self.files):
                return _unprocessable(f"No commit found for SHA: {sha}")
            sent = await request.json()
            status = {key: sent.get(key) for key in ("state", "context", "description", "target_url")}
            status["context"] = status["context"] or "default"
            if status["state"] not in ("error", "failure", "pending", "success"):
                return _unprocessable("state is not included in the list")
            if len(status["description"] or "") > 140:
                return _unprocessable("description is too long (maximum is 140 characters)")
            self.statuses.setdefault((repo, sha), []).append(status)
            return JSONResponse(
                {"id": next(self._ids), "url": f"{_base(request)}/repos/{repo}/statuses/{sha}", **status,
                 "creator": _user_json(request.state.login), "created_at": _STAMP, "updated_at": _STAMP},
                status_code=201,
            )  # fmt: skip

        @app.get("/repos/{owner}/{name}/contents/{path:path}")
        async def contents(request: Request, owner: str, name: str, path: str) -> Response:
            repo, commit = f"{owner}/{name}", request.query_params.get("ref", "")
            content = self.files.get((repo, commit, path))
            if content is not None:
                return JSONResponse(_content_json(repo, commit, path, content, _base(request)))
            inside = sorted(
                p for r, c, p in self.files if (r, c) == (repo, commit) and p.startswith(path + "/")
            )
            if not inside:
                return _not_found()
            entries = sorted({path + "/" + p[len(path) + 1 :].split("/")[0] for p in inside})
            return JSONResponse([self._entry_json(repo, commit, e, _base(request)) for e in entries])

        @app.get("/repos/{owner}/{name}/issues/comments/{comment_id}")
        async def issue_comment(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.issue_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            return JSONResponse(_issue_comment_json(comment, _base(request)))

        @app.post("/repos/{owner}/{name}/issues/comments/{comment_id}/reactions", status_code=201)
        async def react_to_issue_comment(
            request: Request, owner: str, name: str, comment_id: int
        ) -> Response:
            comment = self.issue_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            content = (await request.json())["content"]
            if (request.state.login, content) not in comment.reactions:
                comment.reactions.append((request.state.login, content))
            return JSONResponse(
                {"id": next(self._ids), "content": content, "user": _user_json(request.state.login)}, 201
            )

        @app.patch("/repos/{owner}/{name}/issues/comments/{comment_id}")
        async def edit_issue_comment(request: Request, owner: str, name: str, comment_id: int) -> Response:
            comment = self.issue_comments.get(comment_id)
            if comment is None or comment.repo != f"{owner}/{name}":
                return _not_found()
            if comment.user != request.state.login:
                return _error(403, "You can only edit your own comments")
            comment.body = (await request.json())["body"]
            return JSONResponse(_issue_comment_json(comment, _base(request)))

        @app.post("/graphql")
        async def graphql(request: Request) -> Response:
            payload = await request.json()
            return JSONResponse(self._graphql(payload["query"], payload.get("variables") or {}))

        @app.get("/app/installations")
        async def app_installations(request: Request) -> Response:
            _, installations = self.apps[request.state.login]
            app_id = int(request.state.login)
            return _page(request, [{"id": i, "app_id": app_id} for i in sorted(installations)])

        @app.get("/installation/repositories")
        async def installation_repositories(request: Request) -> Response:
            # Tokens name their App's bot, not their installation: every installation of that App is listed.
            apps = [ids for slug, ids in self.apps.values() if f"{slug}[bot]" == request.state.login]
            repos = [r for ids in apps for i in sorted(ids) for r in self.installed.get(i, [])]
            shown = [{"id": _user_id(r), "full_name": r, "name": r.split("/")[1]} for r in repos]
            return JSONResponse({"total_count": len(shown), "repositories": shown})

        return app

    # --- rules ---

    def _entry_json(self, repo: str, commit: str, path: str, base: str) -> dict[str, Any]:
        """An entry of a folder's listing: a file, or a folder holding files further down."""
        content = self.files.get((repo, commit, path))
        return {
            "type": "dir" if content is None else "file",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": _blob_sha(content or b""),
            "size": len(content or b""),
            "url": f"{base}/repos/{repo}/contents/{path}?ref={commit}",
        }

    def _role(self, repo: str, login: str) -> str | None:
        """``login``'s permission on ``repo``; None when the repository is unknown or private to them."""
        known = repo in self.repos or any(r == repo for r, _ in self.pulls)
        role = self.permissions.get((repo, login))
        if not known or (role is None and self.repos.get(repo, False)):
            return None
        return role or "read"

    def _refuse_hooks(self, repo: str, login: str) -> Response | None:
        role = self._role(repo, login)
        if role is None:
            return _not_found()
        return None if role == "admin" else _error(403, "Must have admin rights to Repository.")

    def _failure(self, request: Request) -> Response | None:
        for failure in self._failures:
            if failure.path == request.url.path and failure.method in (None, request.method):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return _error(failure.status, failure.message, failure.headers)
        return None

    def _secondary_limit(self, request: Request) -> Response | None:
        if request.method not in _WRITES or request.url.path.startswith(("/app", "/graphql")):
            return None
        now = time.monotonic()
        while self._writes and self._writes[0] < now - 60:
            self._writes.popleft()
        if len(self._writes) >= self.secondary_limit:
            return _error(403, SECONDARY_MESSAGE, {"Retry-After": "60"})
        self._writes.append(now)
        return None

    def _authenticate(self, request: Request) -> str | Response:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if request.url.path.startswith("/app"):  # the App itself: a JWT whose "iss" is its id
            app_id = _jwt_issuer(credential) if scheme.lower() == "bearer" else None
            if app_id not in self.apps:
                return _error(401, "A JSON web token could not be decoded")
            return app_id
        login = self.tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        return _error(401, "Bad credentials") if login is None else login

    def _create_review(self, pr: PullRequest, review: dict[str, Any], login: str) -> Response:
        event = review.get("event")
        if event in ("COMMENT", "REQUEST_CHANGES") and not (review.get("body") or "").strip():
            return _unprocessable(f"Review body is required for {event}")
        if review.get("commit_id", pr.head_sha) != pr.head_sha:
            return _unprocessable("commit_id is not part of the pull request")
        stored: list[ReviewComment] = []
        review_id = next(self._ids)
        for c in review.get("comments") or []:
            if "position" in c:
                return _unprocessable("fake GitHub: 'position' is legacy, send line and side")
            anchors = pr.anchors.get(c.get("path"))
            if anchors is None:
                return _unprocessable("Path could not be resolved")
            if c.get("subject_type") == "file":
                line, side = None, None
            else:
                line, side = c.get("line"), c.get("side", "RIGHT")
                if side not in anchors or line not in anchors[side]:
                    return _unprocessable("Line could not be resolved")
            subject = c.get("subject_type") or "line"
            place = (pr.repo, pr.number, review_id, c["path"], line, side, subject)
            stored.append(
                ReviewComment(next(self._ids), *place, body=c["body"], user=login, commit_id=pr.head_sha)
            )
        self.review_comments.update((c.id, c) for c in stored)
        state = {"COMMENT": "COMMENTED", "APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}
        record = {
            "id": review_id,
            "user": _user_json(login),
            "body": review.get("body") or "",
            "state": state.get(event or "", "PENDING"),
            "commit_id": pr.head_sha,
            "submitted_at": _STAMP,
        }
        self.reviews.append(record)
        return JSONResponse(record)

    def _graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        roots = {c.id: c for c in self.review_comments.values() if c.in_reply_to_id is None}
        if "resolveReviewThread" in query:
            root_id = int(str(variables.get("threadId", "")).removeprefix("PRRT_") or 0)
            if root_id not in roots:
                message = f"Could not resolve to a node with the global id of '{variables.get('threadId')}'"
                return {"data": None, "errors": [{"type": "NOT_FOUND", "message": message}]}
            self.resolved.add(root_id)
            return {
                "data": {"resolveReviewThread": {"thread": {"id": f"PRRT_{root_id}", "isResolved": True}}}
            }
        if "reviewThreads" in query:
            repo = f"{variables['owner']}/{variables['name']}"
            threads = sorted(i for i, c in roots.items() if (c.repo, c.pr) == (repo, variables["number"]))
            start = int(variables.get("cursor") or 0)
            chunk = threads[start : start + self.graphql_page]
            nodes = [
                {
                    "id": f"PRRT_{i}",
                    "isResolved": i in self.resolved,
                    "comments": {"nodes": [{"databaseId": i}]},
                }
                for i in chunk
            ]
            more = start + len(chunk) < len(threads)
            page = {"pageInfo": {"hasNextPage": more, "endCursor": str(start + len(chunk))}, "nodes": nodes}
            return {"data": {"repository": {"pullRequest": {"reviewThreads": page}}}}
        return {
            "data": None,
            "errors": [{"message": "fake GitHub serves reviewThreads and resolveReviewThread"}],
        }


# --- JSON shapes ---


def _edit_hook(hook: dict[str, Any], sent: dict[str, Any]) -> None:
    """A create's or an edit's fields on the stored hook; GitHub never shows the secret back."""
    for key in ("active", "events", "name"):
        if key in sent:
            hook[key] = sent[key]
    hook["config"] = {**hook["config"], **(sent.get("config") or {})}


def _hook_json(hook: dict[str, Any], base: str) -> dict[str, Any]:
    url = f"{base}/repos/{hook['repo']}/hooks/{hook['id']}"
    config = {k: ("********" if k == "secret" else v) for k, v in hook["config"].items()}
    return {
        **{k: v for k, v in hook.items() if k != "repo"},
        "type": "Repository",
        "config": config,
        "url": url,
        "test_url": f"{url}/test",
        "ping_url": f"{url}/pings",
        "deliveries_url": f"{url}/deliveries",
        "created_at": _STAMP,
        "updated_at": _STAMP,
    }


def _file_entry(seed: SeedFile) -> tuple[dict[str, Any], dict[str, set[int]]]:
    status = "added" if seed.old is None else "removed" if seed.new is None else "modified"
    if seed.previous_path is not None:
        status = "renamed"
    entry: dict[str, Any] = {"sha": secrets.token_hex(20), "filename": seed.path, "status": status}
    if seed.previous_path is not None:
        entry["previous_filename"] = seed.previous_path
    patch = "" if seed.binary else _patch(seed.old or "", seed.new or "")
    added = sum(1 for line in patch.splitlines() if line.startswith("+"))
    removed = sum(1 for line in patch.splitlines() if line.startswith("-"))
    entry.update(additions=added, deletions=removed, changes=added + removed)
    if patch and not seed.too_large:
        entry["patch"] = patch
    return entry, (_anchors(patch) if "patch" in entry else {"LEFT": set(), "RIGHT": set()})


def _patch(old: str, new: str) -> str:
    """GitHub's ``patch`` for a file: the hunks of a unified diff, without file headers or final newline."""
    out: list[str] = []
    for line in list(difflib.unified_diff(old.splitlines(True), new.splitlines(True)))[2:]:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out).removesuffix("\n")


def _anchors(patch: str) -> dict[str, set[int]]:
    """The lines a review comment may sit on: LEFT removed or context, RIGHT added or context."""
    left: set[int] = set()
    right: set[int] = set()
    old_no = new_no = 0
    for line in patch.splitlines():
        if match := _HUNK.match(line):
            old_no, new_no = int(match[1]), int(match[2])
        elif line.startswith("+"):
            right.add(new_no)
            new_no += 1
        elif line.startswith("-"):
            left.add(old_no)
            old_no += 1
        elif line.startswith(" "):
            left.add(old_no)
            right.add(new_no)
            old_no, new_no = old_no + 1, new_no + 1
    return {"LEFT": left, "RIGHT": right}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _user_id(login: str) -> int:
    return sum(login.encode()) + 100


def _user_json(login: str) -> dict[str, Any]:
    kind = "Bot" if login.endswith("[bot]") else "User"
    return {"login": login, "id": _user_id(login), "type": kind}


def _pull_json(pr: PullRequest, base: str) -> dict[str, Any]:
    url = f"{base}/repos/{pr.repo}"
    return {
        "url": f"{url}/pulls/{pr.number}",
        "html_url": f"{base}/{pr.repo}/pull/{pr.number}",
        "issue_url": f"{url}/issues/{pr.number}",
        "number": pr.number,
        "title": pr.title,
        "state": pr.state,
        "draft": pr.draft,
        "merged": pr.merged,
        "user": _user_json(pr.author),
        "head": {"sha": pr.head_sha, "ref": "feature", "label": "feature"},
        "base": {"sha": pr.base_sha, "ref": "main", "label": "main"},
        "changed_files": len(pr.files),
        "created_at": _STAMP,
        "updated_at": pr.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _review_comment_json(c: ReviewComment, base: str) -> dict[str, Any]:
    contents = [content for _, content in c.reactions]
    reactions = {key: contents.count(key) for key in ("+1", "-1", "laugh", "confused", "heart", "hooray")}
    data: dict[str, Any] = {
        "id": c.id,
        "url": f"{base}/repos/{c.repo}/pulls/comments/{c.id}",
        "html_url": f"{base}/{c.repo}/pull/{c.pr}#discussion_r{c.id}",
        "pull_request_review_id": c.review_id,
        "path": c.path,
        "line": c.line,
        "side": c.side,
        "subject_type": c.subject_type,
        "body": c.body,
        "user": _user_json(c.user),
        "commit_id": c.commit_id,
        "created_at": _STAMP,
        "updated_at": _STAMP,
        "reactions": {**reactions, "total_count": sum(reactions.values())},
    }
    if c.in_reply_to_id is not None:
        data["in_reply_to_id"] = c.in_reply_to_id
    return data


def _issue_comment_json(c: IssueComment, base: str) -> dict[str, Any]:
    return {
        "id": c.id,
        "url": f"{base}/repos/{c.repo}/issues/comments/{c.id}",
        "html_url": f"{base}/{c.repo}/pull/{c.pr}#issuecomment-{c.id}",
        "body": c.body,
        "user": _user_json(c.user),
        "created_at": _STAMP,
        "updated_at": _STAMP,
    }


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _content_json(repo: str, commit: str, path: str, content: bytes, base: str) -> dict[str, Any]:
    """A file as the contents API shows it: base64 in lines of 60, no content past 1 MB."""
    encoded = base64.b64encode(content).decode()
    shown = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n"
    large = len(content) > 1024 * 1024
    return {
        "type": "file",
        "encoding": "none" if large else "base64",
        "size": len(content),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "content": "" if large else shown,
        "sha": _blob_sha(content),
        "url": f"{base}/repos/{repo}/contents/{path}?ref={commit}",
        "html_url": f"https://github.example/{repo}/blob/{commit}/{path}",
        "download_url": None,
    }


def _label_json(repo: str, name: str, base: str) -> dict[str, Any]:
    return {"id": _user_id(name), "name": name, "color": "ededed", "default": False, "description": None,
            "url": f"{base}/repos/{repo}/labels/{name}"}  # fmt: skip


def _page(request: Request, items: list[dict[str, Any]]) -> Response:
    """One page of a list, with GitHub's ``Link`` header (PyGithub follows rel="next")."""
    per_page = min(int(request.query_params.get("per_page", 30)), 100)
    page = max(int(request.query_params.get("page", 1)), 1)
    last = max(1, -(-len(items) // per_page))
    links = []
    for rel, number in (("next", page + 1), ("last", last)):
        if page < last:
            query = urlencode({**request.query_params, "per_page": per_page, "page": number})
            links.append(f'<{_base(request)}{request.url.path}?{query}>; rel="{rel}"')
    headers = {"Link": ", ".join(links)} if links else {}
    return JSONResponse(items[(page - 1) * per_page : page * per_page], headers=headers)


def _jwt_issuer(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["iss"])
    except (IndexError, ValueError, KeyError):
        return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found() -> Response:
    return _error(404, "Not Found")


def _unprocessable(reason: str) -> Response:
    body = {
        "message": "Unprocessable Entity",
        "errors": [reason],
        "documentation_url": "https://docs.github.com/rest",
    }
    return JSONResponse(body, status_code=422)
