"""A stateful fake of the parts of GitLab's REST API (``/api/v4``) the bot uses, for python-gitlab to
talk to over HTTP (serve ``FakeGitLab().app`` with ``tests.support.live_server``).

It keeps GitLab's rules that the bot must get right:

- ``PRIVATE-TOKEN`` names a user; an unknown one gets 401. Only a note's author may edit it (403).
- A ``text`` position needs the latest diff version's SHAs and GitLab's line rule: an added line
  takes ``new_line`` only, a removed line ``old_line`` only, a context line both, at numbers the
  latest diff shows; anything else gets ``400 {"message": {"line_code": ["can't be blank"]}}``.
- Members: ``members/all`` holds the project's own members and those inherited from its group
  (``add_member``), ``members`` only its own; anyone else is 404.
- Tokens have scopes (``add_user(..., scopes=[...])``, default ``api``): a write without ``api`` is
  ``403 insufficient_scope``; ``/personal_access_tokens/self`` shows them.
- Webhooks of projects and groups (``add_group``): listing or changing them needs Maintainer on a
  project, Owner on a group (403 otherwise); they are stored in ``hooks`` with their flags.
- Repository files at a commit (``put_file``): the raw files API wants the file path percent-encoded,
  slashes included (an unencoded one is 404, as on GitLab), and a ``ref``.
- Labels on a merge request (``labels_of``): ``PUT .../merge_requests/:iid`` with ``labels``,
  ``add_labels`` or ``remove_labels`` (comma-separated, as GitLab takes them).
- Commit statuses (``statuses_of``): ``POST /projects/:id/statuses/:sha`` on a commit the project
  knows (a merge request's version, a ``put_file`` commit, one added to ``commits``; else 404),
  with one of GitLab's states (``error`` is not one: 400). Setting a status to the state its latest
  one of that name already has is refused as GitLab refuses a repeated ``pending``: ``400 Cannot
  transition status via :enqueue from :pending`` (stricter than GitLab, which starts a new status
  for a repeated finished state).
- Lists are paginated like GitLab's (``page``/``per_page``, ``X-Page``, ``X-Next-Page``, ``X-Total``,
  ``Link``), 20 per page unless asked, 100 at most.

``fail()`` scripts failures (429 with Retry-After, 5xx) and ``requests`` records every request.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

CAN_NOT_PLACE = {"message": {"line_code": ["can't be blank"]}}  # GitLab's answer to a bad position
# A commit status's states, and the state machine's event that moves a status to each
STATUS_EVENTS = {"pending": "enqueue", "running": "run", "success": "success", "failed": "drop",
                 "canceled": "cancel", "skipped": "skip"}  # fmt: skip
TIMESTAMP = "2024-05-01T12:00:00.000Z"


@dataclass
class User:
    id: int
    username: str
    token: str
    scopes: list[str] = field(default_factory=lambda: ["api"])

    def api(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "name": self.username.title(),
            "state": "active",
            "web_url": f"{base_url}/{self.username}",
        }


@dataclass
class FileChange:
    """One file of a diff version, as GitLab's ``/diffs`` lists it (``diff`` holds only the hunks)."""

    old_path: str
    new_path: str
    diff: str
    a_mode: str = "100644"
    b_mode: str = "100644"
    new_file: bool = False
    deleted_file: bool = False
    renamed_file: bool = False
    too_large: bool = False
    collapsed: bool = False

    def api(self) -> dict[str, Any]:
        return {**self.__dict__, "generated_file": False}

    def lines(self) -> set[tuple[int | None, int | None]]:
        """(old_line, new_line) of each line the diff shows: (None, n) added, (n, None) removed."""
        shown: set[tuple[int | None, int | None]] = set()
        old = new = 0
        for text in self.diff.splitlines():
            if hunk := re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@", text):
                old, new = int(hunk[1]), int(hunk[2])
            elif text.startswith("+"):
                shown.add((None, new))
                new += 1
            elif text.startswith("-"):
                shown.add((old, None))
                old += 1
            elif text.startswith(" "):
                shown.add((old, new))
                old, new = old + 1, new + 1
        return shown


def change(
    path: str,
    old: str | None,
    new: str | None,
    *,
    old_path: str | None = None,
    old_mode: str = "100644",
    new_mode: str = "100644",
    omitted: str | None = None,
) -> FileChange:
    """A file's change from its old and new contents (None: the file is absent on that side).
    ``old_path`` makes it a rename; ``omitted`` ("too_large" or "collapsed") leaves the diff out, as
    GitLab does for big files."""
    a_lines = (old or "").splitlines(keepends=True)
    b_lines = (new or "").splitlines(keepends=True)
    hunks = "".join(_no_newline_marked(difflib.unified_diff(a_lines, b_lines, n=3))[2:])
    return FileChange(
        old_path=old_path or path,
        new_path=path,
        diff="" if omitted else hunks,
        a_mode="0" if old is None else old_mode,
        b_mode="0" if new is None else new_mode,
        new_file=old is None,
        deleted_file=new is None,
        renamed_file=old_path is not None and old_path != path,
        too_large=omitted == "too_large",
        collapsed=omitted == "collapsed",
    )


def _no_newline_marked(lines: Iterable[str]) -> list[str]:
    # difflib leaves a last line without "\n" as it is; git marks it.
    return [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines]


def sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Version:
    id: int
    base_sha: str
    start_sha: str
    head_sha: str
    files: list[FileChange]

    def file(self, new_path: str | None, old_path: str | None) -> FileChange | None:
        return next((f for f in self.files if f.new_path == new_path and f.old_path == old_path), None)


@dataclass
class Note:
    id: int
    author: User
    body: str
    position: dict[str, Any] | None = None
    resolvable: bool = False
    resolved: bool = False
    updated_at: str = TIMESTAMP
    awards: list[tuple[User, str]] = field(default_factory=list)


@dataclass
class Discussion:
    id: str
    notes: list[Note]
    individual_note: bool


@dataclass
class MergeRequest:
    id: int
    iid: int
    project_id: int
    title: str
    author: User
    state: str
    draft: bool
    versions: list[Version]  # oldest first
    sha: str  # the head; GitLab moves it before the push's diff version is ready
    discussions: list[Discussion] = field(default_factory=list)
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # moved by ``push``
    labels: list[str] = field(default_factory=list)

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def notes(self) -> list[tuple[Discussion, Note]]:
        return [(discussion, note) for discussion in self.discussions for note in discussion.notes]


@dataclass
class Project:
    id: int
    path: str
    merge_requests: dict[int, MergeRequest] = field(default_factory=dict)
    members: dict[int, int] = field(default_factory=dict)  # user id -> access level, its own members
    inherited: dict[int, int] = field(default_factory=dict)  # user id -> access level, from its group
    hooks: list[dict[str, Any]] = field(default_factory=list)  # as GitLab shows them, the token kept


@dataclass
class Group:
    id: int
    path: str  # its full path
    members: dict[int, int] = field(default_factory=dict)  # user id -> access level
    inherited: dict[int, int] = field(default_factory=dict)  # from its parent groups
    hooks: list[dict[str, Any]] = field(default_factory=list)


HOOK_FLAGS = (
    "push_events", "tag_push_events", "merge_requests_events", "note_events", "confidential_note_events",
    "emoji_events", "issues_events", "confidential_issues_events", "job_events", "pipeline_events",
    "wiki_page_events", "deployment_events", "releases_events",
)  # fmt: skip
HOOK_LEVEL = {"project": 40, "group": 50}  # Maintainer manages a project's hooks, Owner a group's


@dataclass
class Failure:
    method: str
    path: str  # a regular expression searched in the request's (decoded) path
    status: int
    times: int
    headers: dict[str, str]
    message: str | None = None  # GitLab's message; default "<status> scripted failure"


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class FakeGitLab:
    def __init__(self, per_page: int = 20) -> None:
        self.per_page = per_page
        self.users: dict[str, User] = {}  # by token
        self.projects: list[Project] = []
        self.groups: list[Group] = []
        self.requests: list[tuple[str, str]] = []  # (method, decoded path), every request
        self.failures: list[Failure] = []
        self.files: dict[tuple[str, str, str], bytes] = {}  # (project path, commit, file path) -> content
        self.statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (project path, sha) -> in order
        self.commits: set[tuple[str, str]] = set()  # (project path, sha) of commits besides the MRs' own
        self._ids = itertools.count(1)
        self.app = self._build_app()

    # --- seeding and inspecting, for tests

    def add_user(self, username: str, token: str, *, scopes: Iterable[str] = ("api",)) -> User:
        user = User(next(self._ids), username, token, list(scopes))
        self.users[token] = user
        return user

    def add_group(self, path: str) -> Group:
        group = Group(next(self._ids), path)
        self.groups.append(group)
        return group

    def add_project(self, path: str) -> Project:
        project = Project(next(self._ids), path)
        self.projects.append(project)
        return project

    def add_member(
        self, project: Project | Group, user: User, access_level: int, *, inherited: bool = False
    ) -> User:
        """``user`` a member of ``project`` (or a group) at ``access_level`` (10 Guest … 50 Owner), or of
        its group."""
        (project.inherited if inherited else project.members)[user.id] = access_level
        return user

    def add_merge_request(
        self,
        project: Project,
        changes: list[FileChange],
        *,
        author: User,
        title: str = "Change things",
        state: str = "opened",
        draft: bool = False,
    ) -> MergeRequest:
        iid = len(project.merge_requests) + 1
        base = sha(project.path, iid, "base")
        version = Version(next(self._ids), base, base, sha(project.path, iid, 1), changes)
        mr = MergeRequest(
            next(self._ids), iid, project.id, title, author, state, draft, [version], version.head_sha
        )
        project.merge_requests[iid] = mr
        return mr

    def push(self, mr: MergeRequest, changes: list[FileChange]) -> Version:
        """A new diff version (same base, new head) with these files."""
        head = sha(mr.id, len(mr.versions) + 1)
        version = Version(next(self._ids), mr.latest.base_sha, mr.latest.start_sha, head, changes)
        mr.versions.append(version)
        mr.sha, mr.updated_at = head, datetime.now(UTC)
        return version

    def add_note(self, mr: MergeRequest, author: User, body: str, *, resolvable: bool = False) -> Note:
        """A note in a discussion of its own (resolvable: a thread, else a plain comment)."""
        note = Note(next(self._ids), author, body, resolvable=resolvable)
        mr.discussions.append(Discussion(sha("discussion", note.id), [note], individual_note=not resolvable))
        return note

    def add_reply(self, discussion: Discussion, author: User, body: str) -> Note:
        """A note added to ``discussion`` (a reply written on GitLab)."""
        note = Note(next(self._ids), author, body, resolvable=discussion.notes[0].resolvable)
        discussion.notes.append(note)
        return note

    def put_file(self, project_path: str, sha: str, path: str, text: str | bytes) -> None:
        """The repository of ``project_path`` holds ``path`` with ``text`` at commit ``sha``."""
        self.files[(project_path, sha, path)] = text.encode() if isinstance(text, str) else text

    def labels_of(self, project_path: str, iid: int) -> list[str]:
        """The labels on merge request ``iid``, in the order they were added."""
        return list(self._mr(project_path, iid).labels)

    def statuses_of(self, project_path: str, sha: str) -> list[dict[str, Any]]:
        """Every status set on commit ``sha`` of the project, oldest first: its ``state``, ``name``,
        ``description`` and ``target_url`` as sent (absent ones None)."""
        return [dict(status) for status in self.statuses.get((project_path, sha), [])]

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``times`` requests whose path matches ``path`` (a regex) answer ``status``, with
        ``message`` as GitLab's."""
        self.failures.append(Failure(method.upper(), path, status, times, headers or {}, message))

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method != "GET"]

    # --- the API

    def _project(self, ref: str) -> Project:
        for project in self.projects:
            if ref in (project.path, str(project.id)):
                return project
        raise NotFound("404 Project Not Found")

    def _group(self, ref: str) -> Group:
        for group in self.groups:
            if ref in (group.path, str(group.id)):
                return group
        raise NotFound("404 Group Not Found")

    def _hook_target(self, kind: str, ref: str, user: User) -> Project | Group:
        """The project or group whose hooks ``user`` manages; 403 below the level GitLab asks for."""
        if kind not in ("projects", "groups"):
            raise NotFound("404 Not found")
        target = self._project(ref) if kind == "projects" else self._group(ref)
        level = {**target.inherited, **target.members}.get(user.id, 0)
        if level < HOOK_LEVEL["project" if kind == "projects" else "group"]:
            raise Forbidden("403 Forbidden")
        return target

    def _commit_known(self, project: Project, sha: str) -> bool:
        versions = (v for mr in project.merge_requests.values() for v in mr.versions)
        shas = {s for v in versions for s in (v.base_sha, v.start_sha, v.head_sha)}
        files = {(path, commit) for path, commit, _ in self.files}
        return sha in shas or (project.path, sha) in self.commits | files

    def _mr(self, ref: str, iid: int) -> MergeRequest:
        mr = self._project(ref).merge_requests.get(iid)
        if mr is None:
            raise NotFound("404 Not found")
        return mr

    def _note(self, mr: MergeRequest, note_id: int) -> tuple[Discussion, Note]:
        found = next(((d, n) for d, n in mr.notes() if n.id == note_id), None)
        if found is None:
            raise NotFound("404 Note Not Found")
        return found

    def _discussion(self, mr: MergeRequest, discussion_id: str) -> Discussion:
        found = next((d for d in mr.discussions if d.id == discussion_id), None)
        if found is None:
            raise NotFound("404 Discussion Not Found")
        return found

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        mrs = "/api/v4/projects/{ref:path}/merge_requests/{iid:int}"

        @app.middleware("http")
        async def record_fail_authenticate(request: Request, call_next: Any) -> Response:
            method, path = request.method, request.url.path
            self.requests.append((method, path))
            for failure in self.failures:
                if failure.times > 0 and failure.method == method and re.search(failure.path, path):
                    failure.times -= 1
                    message = {"message": failure.message or f"{failure.status} scripted failure"}
                    return JSONResponse(message, failure.status, headers=failure.headers)
            user = self.users.get(request.headers.get("PRIVATE-TOKEN", ""))
            if user is None:
                return JSONResponse({"message": "401 Unauthorized"}, 401)
            if method != "GET" and "api" not in user.scopes:
                return JSONResponse({"error": "insufficient_scope", "scope": "api"}, 403)
            request.state.user = user
            response: Response = await call_next(request)
            return response

        @app.exception_handler(NotFound)
        async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
            return JSONResponse({"message": str(exc)}, 404)

        @app.exception_handler(Forbidden)
        async def forbidden(_request: Request, exc: Forbidden) -> JSONResponse:
            return JSONResponse({"message": str(exc)}, 403)

        @app.get("/api/v4/personal_access_tokens/self")
        async def own_token(request: Request) -> dict[str, Any]:
            user: User = request.state.user
            return {"id": user.id, "name": "bot", "user_id": user.id, "scopes": user.scopes, "active": True,
                    "revoked": False, "expires_at": None}  # fmt: skip

        @app.get("/api/v4/groups/{ref:path}/members/all/{user_id:int}")
        async def group_member(request: Request, ref: str, user_id: int) -> Response:
            group = self._group(ref)
            levels = {**group.inherited, **group.members}
            user = next((u for u in self.users.values() if u.id == user_id), None)
            if user is None or user_id not in levels:
                raise NotFound("404 Not found")
            return JSONResponse({**user.api(_base_url(request)), "access_level": levels[user_id]})

        hooks = "/api/v4/{kind:str}/{ref:path}/hooks"

        @app.get(hooks)
        async def list_hooks(request: Request, kind: str, ref: str) -> Response:
            target = self._hook_target(kind, ref, request.state.user)
            shown = [{k: v for k, v in hook.items() if k != "token"} for hook in target.hooks]
            return _page(request, shown, self.per_page)

        @app.post(hooks, status_code=201)
        async def create_hook(request: Request, kind: str, ref: str) -> Response:
            target, params = self._hook_target(kind, ref, request.state.user), await _params(request)
            if not params.get("url"):
                return JSONResponse({"error": "url is missing"}, 400)
            hook: dict[str, Any] = {
                "id": next(self._ids),
                "url": params["url"],
                "alert_status": "executable",
                "enable_ssl_verification": True,
                "push_events": True,  # GitLab's default
                "created_at": TIMESTAMP,
            }
            hook[f"{kind.removesuffix('s')}_id"] = target.id
            hook |= _hook_fields(params)
            target.hooks.append(hook)
            return JSONResponse({k: v for k, v in hook.items() if k != "token"}, 201)

        @app.put(hooks + "/{hook_id:int}")
        async def edit_hook(request: Request, kind: str, ref: str, hook_id: int) -> Response:
            target, params = self._hook_target(kind, ref, request.state.user), await _params(request)
            hook = next((h for h in target.hooks if h["id"] == hook_id), None)
            if hook is None:
                raise NotFound("404 Not found")
            hook |= _hook_fields(params)
            return JSONResponse({k: v for k, v in hook.items() if k != "token"})

        @app.get("/api/v4/groups/{ref:path}")
        async def group(request: Request, ref: str) -> Response:
            found = self._group(ref)
            user: User = request.state.user
            if user.id not in {**found.inherited, **found.members}:
                raise NotFound("404 Group Not Found")  # a private group: as if it did not exist
            web_url = f"{_base_url(request)}/groups/{found.path}"
            return JSONResponse({"id": found.id, "full_path": found.path, "web_url": web_url})

        @app.get("/api/v4/user")
        async def current_user(request: Request) -> dict[str, Any]:
            user: User = request.state.user
            return user.api(_base_url(request))

        @app.get("/api/v4/users")
        async def users(request: Request) -> Response:
            wanted = request.query_params.get("username")
            found = [u for u in self.users.values() if wanted in (None, u.username)]
            return _page(request, [u.api(_base_url(request)) for u in found], self.per_page)

        @app.get("/api/v4/projects/{ref:path}/members/all/{user_id:int}")
        @app.get("/api/v4/projects/{ref:path}/members/{user_id:int}")
        async def member(request: Request, ref: str, user_id: int) -> Response:
            project = self._project(ref)
            levels = project.members
            if "/members/all/" in request.url.path:
                levels = {**project.inherited, **project.members}
            user = next((u for u in self.users.values() if u.id == user_id), None)
            if user is None or user_id not in levels:
                raise NotFound("404 Not found")
            return JSONResponse({**user.api(_base_url(request)), "access_level": levels[user_id]})

        @app.get("/api/v4/projects/{ref:path}/merge_requests")
        async def merge_requests(request: Request, ref: str) -> Response:
            query = request.query_params
            state, after = query.get("state", "all"), query.get("updated_after")
            found = [
                mr
                for mr in self._project(ref).merge_requests.values()
                if state in ("all", mr.state)
                and (after is None or mr.updated_at >= datetime.fromisoformat(after))
            ]
            key = "updated_at" if query.get("order_by") == "updated_at" else "id"  # created_at: by id
            found.sort(key=lambda mr: getattr(mr, key), reverse=query.get("sort", "desc") == "desc")
            base_url = _base_url(request)
            return _page(
                request, [_merge_request(mr, ref, base_url, listed=True) for mr in found], self.per_page
            )

        @app.get(mrs)
        async def merge_request(request: Request, ref: str, iid: int) -> dict[str, Any]:
            return _merge_request(self._mr(ref, iid), ref, _base_url(request))

        @app.put(mrs)
        async def edit_merge_request(request: Request, ref: str, iid: int) -> dict[str, Any]:
            mr, params = self._mr(ref, iid), await _params(request)

            def names(key: str) -> list[str]:
                return [name.strip() for name in str(params.get(key) or "").split(",") if name.strip()]

            if "labels" in params:
                mr.labels = list(dict.fromkeys(names("labels")))
            mr.labels += [name for name in dict.fromkeys(names("add_labels")) if name not in mr.labels]
            mr.labels = [name for name in mr.labels if name not in names("remove_labels")]
            return _merge_request(mr, ref, _base_url(request))

        @app.get("/api/v4/projects/{ref:path}/repository/files/{file_path:path}/raw")
        async def raw_file(request: Request) -> Response:
            # from the raw path: GitLab takes the project and the file path each encoded as one segment
            raw = request.scope["raw_path"].decode()
            parts = re.fullmatch(r"/api/v4/projects/([^/]+)/repository/files/([^/]+)/raw", raw)
            if parts is None:
                raise NotFound("404 Not Found")
            project = self._project(urllib.parse.unquote(parts[1]))
            commit = request.query_params.get("ref")
            if not commit:
                return JSONResponse({"error": "ref is missing"}, 400)
            content = self.files.get((project.path, commit, urllib.parse.unquote(parts[2])))
            if content is None:
                raise NotFound("404 File Not Found")
            return Response(content, media_type="text/plain; charset=utf-8")

        @app.post("/api/v4/projects/{ref:path}/statuses/{commit}", status_code=201)
        async def set_status(request: Request, ref: str, commit: str) -> Response:
            project, params = self._project(ref), await _params(request)
            if not self._commit_known(project, commit):
                raise NotFound("404 Commit Not Found")
            state, name = params.get("state"), str(params.get("name") or "default")
            if state not in STATUS_EVENTS:
                return JSONResponse({"error": "state does not have a valid value"}, 400)
            held = [s for s in self.statuses.get((project.path, commit), []) if s["name"] == name]
            if held and held[-1]["state"] == state:
                message = f"Cannot transition status via :{STATUS_EVENTS[state]} from :{state}"
                return JSONResponse({"message": message}, 400)
            fields = {key: params.get(key) for key in ("description", "target_url")}
            status = {"state": state, "name": name, **fields}
            self.statuses.setdefault((project.path, commit), []).append(status)
            user: User = request.state.user
            return JSONResponse(
                {"id": next(self._ids), "sha": commit, "ref": None, "status": state, "name": name,
                 **fields, "created_at": TIMESTAMP, "allow_failure": False,
                 "author": user.api(_base_url(request))},
                201,
            )  # fmt: skip

        @app.get(mrs + "/versions")
        async def versions(request: Request, ref: str, iid: int) -> Response:
            mr = self._mr(ref, iid)
            return _page(request, [_version(mr, version) for version in reversed(mr.versions)], self.per_page)

        @app.get(mrs + "/diffs")
        async def diffs(request: Request, ref: str, iid: int) -> Response:
            return _page(request, [file.api() for file in self._mr(ref, iid).latest.files], self.per_page)

        @app.get(mrs + "/discussions")
        async def discussions(request: Request, ref: str, iid: int) -> Response:
            mr = self._mr(ref, iid)
            return _page(
                request, [_discussion(mr, d, _base_url(request)) for d in mr.discussions], self.per_page
            )

        @app.post(mrs + "/discussions", status_code=201)
        async def create_discussion(request: Request, ref: str, iid: int) -> Response:
            mr, params = self._mr(ref, iid), await _params(request)
            if not params.get("body"):
                return JSONResponse({"error": "body is missing"}, 400)
            position = params.get("position")
            if position is not None and (error := _position_error(mr, position)) is not None:
                return JSONResponse(error, 400)
            note = Note(next(self._ids), request.state.user, params["body"], position, resolvable=True)
            discussion = Discussion(sha("discussion", note.id), [note], individual_note=False)
            mr.discussions.append(discussion)
            return JSONResponse(_discussion(mr, discussion, _base_url(request)), 201)

        @app.put(mrs + "/discussions/{discussion_id}")
        async def resolve_discussion(request: Request, ref: str, iid: int, discussion_id: str) -> Response:
            mr, params = self._mr(ref, iid), await _params(request)
            discussion = self._discussion(mr, discussion_id)
            if not any(note.resolvable for note in discussion.notes):
                return JSONResponse({"message": "405 Method Not Allowed"}, 405)
            for note in discussion.notes:
                note.resolved = note.resolvable and _truthy(params.get("resolved"))
            return JSONResponse(_discussion(mr, discussion, _base_url(request)))

        @app.put(mrs + "/discussions/{discussion_id}/notes/{note_id:int}")
        @app.put(mrs + "/notes/{note_id:int}")
        async def edit_note(request: Request, ref: str, iid: int, note_id: int) -> Response:
            mr, params = self._mr(ref, iid), await _params(request)
            discussion, note = self._note(mr, note_id)
            if note.author is not request.state.user:
                return JSONResponse({"message": "403 Forbidden"}, 403)
            note.body, note.updated_at = params["body"], "2024-05-01T12:30:00.000Z"
            return JSONResponse(_note(mr, discussion, note, _base_url(request)))

        @app.get(mrs + "/notes")
        async def notes(request: Request, ref: str, iid: int) -> Response:
            mr = self._mr(ref, iid)
            newest_first = sorted(mr.notes(), key=lambda pair: -pair[1].id)
            base_url = _base_url(request)
            return _page(request, [_note(mr, d, n, base_url) for d, n in newest_first], self.per_page)

        @app.post(mrs + "/notes", status_code=201)
        async def create_note(request: Request, ref: str, iid: int) -> Response:
            mr, params = self._mr(ref, iid), await _params(request)
            if not params.get("body"):
                return JSONResponse({"error": "body is missing"}, 400)
            note = self.add_note(mr, request.state.user, params["body"])
            return JSONResponse(_note(mr, mr.discussions[-1], note, _base_url(request)), 201)

        @app.post(mrs + "/discussions/{discussion_id}/notes", status_code=201)
        async def reply(request: Request, ref: str, iid: int, discussion_id: str) -> Response:
            mr, params = self._mr(ref, iid), await _params(request)
            discussion = self._discussion(mr, discussion_id)
            note = self.add_reply(discussion, request.state.user, params["body"])
            return JSONResponse(_note(mr, discussion, note, _base_url(request)), 201)

        @app.post(mrs + "/notes/{note_id:int}/award_emoji", status_code=201)
        async def award(request: Request, ref: str, iid: int, note_id: int) -> Response:
            params = await _params(request)
            _, note = self._note(self._mr(ref, iid), note_id)
            if (request.state.user, params["name"]) in note.awards:
                return JSONResponse({"message": "Award Emoji Name has already been taken"}, 404)
            note.awards.append((request.state.user, params["name"]))
            return JSONResponse(
                {"id": len(note.awards), "name": params["name"], "awardable_id": note.id}, 201
            )

        @app.get(mrs + "/notes/{note_id:int}/award_emoji")
        async def awards(request: Request, ref: str, iid: int, note_id: int) -> Response:
            _, note = self._note(self._mr(ref, iid), note_id)
            base_url = _base_url(request)
            items = [
                {"id": index, "name": name, "user": user.api(base_url), "awardable_id": note.id}
                for index, (user, name) in enumerate(note.awards, 1)
            ]
            return _page(request, items, self.per_page)

        @app.get("/api/v4/projects/{ref:path}")  # last: its {ref:path} would take every longer path
        async def project(request: Request, ref: str) -> Response:
            found = self._project(ref)
            return JSONResponse({"id": found.id, "path_with_namespace": found.path,
                                 "web_url": f"{_base_url(request)}/{found.path}"})  # fmt: skip

        return app


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _params(request: Request) -> dict[str, Any]:
    """GitLab takes parameters as JSON, a form or the query string alike."""
    params: dict[str, Any] = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/json"):
        params.update(await request.json())
    else:
        params.update(await request.form())
    return params


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _hook_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The hook settings a create or an edit sets: its URL, token and flags."""
    fields = {key: params[key] for key in ("url", "token") if key in params}
    for flag in (*HOOK_FLAGS, "enable_ssl_verification"):
        if flag in params:
            fields[flag] = _truthy(params[flag])
    return fields


def _position_error(mr: MergeRequest, position: dict[str, Any]) -> dict[str, Any] | None:
    latest = mr.latest
    shas = (position.get("base_sha"), position.get("start_sha"), position.get("head_sha"))
    if shas != (latest.base_sha, latest.start_sha, latest.head_sha):
        return CAN_NOT_PLACE  # GitLab finds no such diff file in the version those SHAs name
    file = latest.file(position.get("new_path"), position.get("old_path"))
    if file is None:
        return CAN_NOT_PLACE
    if position.get("position_type") == "file":
        return None
    if position.get("position_type") != "text":
        return {"error": "position[position_type] does not have a valid value"}
    old, new = position.get("old_line"), position.get("new_line")
    key = (None if old is None else int(old), None if new is None else int(new))
    return None if key in file.lines() else CAN_NOT_PLACE


def _merge_request(mr: MergeRequest, ref: str, base_url: str, *, listed: bool = False) -> dict[str, Any]:
    """A merge request as GitLab shows it; its list leaves out ``diff_refs``."""
    shown = {
        "id": mr.id,
        "iid": mr.iid,
        "project_id": mr.project_id,
        "title": mr.title,
        "state": mr.state,
        "draft": mr.draft,
        "work_in_progress": mr.draft,
        "author": mr.author.api(base_url),
        "sha": mr.sha,
        "labels": list(mr.labels),
        "updated_at": mr.updated_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "web_url": f"{base_url}/{ref}/-/merge_requests/{mr.iid}",
    }
    if not listed:
        latest = mr.latest
        shown["diff_refs"] = {
            "base_sha": latest.base_sha,
            "start_sha": latest.start_sha,
            "head_sha": latest.head_sha,
        }
    return shown


def _version(mr: MergeRequest, version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "head_commit_sha": version.head_sha,
        "base_commit_sha": version.base_sha,
        "start_commit_sha": version.start_sha,
        "created_at": TIMESTAMP,
        "merge_request_id": mr.id,
        "state": "collected",
        "real_size": str(len(version.files)),
    }


def _note(mr: MergeRequest, discussion: Discussion, note: Note, base_url: str) -> dict[str, Any]:
    return {
        "id": note.id,
        "type": ("DiffNote" if note.position else "DiscussionNote")
        if not discussion.individual_note
        else None,
        "body": note.body,
        "author": note.author.api(base_url),
        "created_at": TIMESTAMP,
        "updated_at": note.updated_at,
        "system": False,
        "noteable_id": mr.id,
        "noteable_type": "MergeRequest",
        "noteable_iid": mr.iid,
        "resolvable": note.resolvable,
        "resolved": note.resolved,
        "position": note.position,
    }


def _discussion(mr: MergeRequest, discussion: Discussion, base_url: str) -> dict[str, Any]:
    return {
        "id": discussion.id,
        "individual_note": discussion.individual_note,
        "notes": [_note(mr, discussion, note, base_url) for note in discussion.notes],
    }


def _page(request: Request, items: list[dict[str, Any]], default_per_page: int) -> Response:
    """One page of ``items`` with GitLab's pagination headers (python-gitlab follows ``Link``)."""
    page = max(1, int(request.query_params.get("page", 1)))
    per_page = min(100, max(1, int(request.query_params.get("per_page", default_per_page))))
    pages = max(1, -(-len(items) // per_page))
    headers = {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Total": str(len(items)),
        "X-Total-Pages": str(pages),
        "X-Next-Page": str(page + 1) if page < pages else "",
        "X-Prev-Page": str(page - 1) if page > 1 else "",
    }
    links = {"first": 1, "last": pages} | ({"next": page + 1} if page < pages else {})
    if page > 1:
        links["prev"] = page - 1
    headers["Link"] = ", ".join(
        f'<{request.url.include_query_params(page=number, per_page=per_page)}>; rel="{rel}"'
        for rel, number in links.items()
    )
    return JSONResponse(items[(page - 1) * per_page : page * per_page], headers=headers)
