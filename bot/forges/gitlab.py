"""The GitLab forge: merge requests, their diffs and the bot's discussions, through python-gitlab.

GitLab's rules that shape this module (see DESIGN.md §6): a positioned discussion needs the SHAs of
the latest diff version, and ``new_line`` only on an added line, ``old_line`` only on a removed one,
both on a context line; GitLab answers anything else with ``400 line_code can't be blank``.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import gitlab
import requests
from gitlab.exceptions import GitlabError
from gitlab.v4.objects import Group, Project, ProjectMergeRequest

from bot import untrusted
from bot.diff import Diff, DiffLine, FileDiff, LineKind, omission_note, quote_path
from bot.events import Role
from bot.forges.base import (
    CREATED,
    MAX_FILE_BYTES,
    STATUS_NAME,
    UPDATED,
    BotComment,
    CommitState,
    ForgeError,
    InlineComment,
    MergeRequest,
    Placement,
    PolledFeedback,
    PostedComment,
    check_file_request,
    checked_labels,
    decode_text,
    own_marker,
    status_fields,
    too_large,
)
from bot.forges.base import WEBHOOK_EVENTS as _EVENTS
from bot.models import ForgeKind, Side

log = logging.getLogger(__name__)

# Per request. A 429 is retried after its Retry-After (python-gitlab sleeps that long), a 5xx or a
# network error after 0.1 s, then 0.2 s; past that the job fails with a retryable ForgeError and the
# queue retries it later, rather than python-gitlab's default of 10 retries holding a worker.
MAX_RETRIES = 2
_STATES = {"opened": "open", "locked": "open", "closed": "closed", "merged": "merged"}
_REFUSED = (400, 422)  # GitLab's answers to a position it cannot place
# GitLab has no error state: an error fails the status too, and its description says why
_COMMIT_STATES = {
    CommitState.PENDING: "pending",
    CommitState.SUCCESS: "success",
    CommitState.FAILED: "failed",
    CommitState.ERROR: "failed",
}
# GitLab's 400 for a status already in the state asked for ("... via :enqueue from :pending")
_NO_TRANSITION = re.compile(r"Cannot transition status via :\w+ from :(\w+)")
WEBHOOK_EVENTS = _EVENTS[ForgeKind.GITLAB]  # the hook flags the bot needs
REVIEWER = Role.DEVELOPER  # the least role the bot's user needs on a project to review it
_HINTS = {
    401: "check the bot's access token: it is invalid, expired or revoked",
    403: "the bot's user lacks permission on the project (it needs at least Reporter to comment)",
    404: "check the project path and the merge request number, and that the bot's user can see them",
}


class _Client(gitlab.Gitlab):
    """python-gitlab takes ``max_retries`` per call only; this sets it for every call."""

    def http_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("max_retries", MAX_RETRIES)
        return super().http_request(*args, **kwargs)


class _Refused(Exception):
    """GitLab would not place a discussion at that position; the message is GitLab's."""


class _GitLabAccount:
    """The bot's account on one GitLab, and what a project and a group have alike: the client and its
    error mapping, the token's checks and the webhook. Its subclasses say which one ``_target`` is."""

    _kind: str  # "project" or "group", in messages
    _hook_level: int  # the access level that manages this target's webhooks

    def __init__(self, url: str, token: str, name: str, *, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._name = name
        self._last = threading.local()  # the Retry-After of this thread's latest response
        session = requests.Session()
        session.hooks["response"].append(self._remember_retry_after)
        self._gl = _Client(
            self.url,
            private_token=token,
            timeout=timeout_s,
            retry_transient_errors=True,
            keep_base_url=True,  # follow pagination links on our URL even if GitLab's external_url differs
            session=session,
        )
        with self._call("read the bot's own user (GET /user)"):
            self._gl.auth()
        assert self._gl.user is not None  # auth() sets it or raises
        self.bot_username: str = str(self._gl.user.username)

    @property
    def _target(self) -> Project | Group:  # lazy: its managers, without a GET
        raise NotImplementedError

    def _read_target(self) -> None:
        """GET the project or group: a GitlabError 404 when it does not exist or the token cannot see it."""
        raise NotImplementedError

    # --- connecting: the token's access, the webhook

    def access_problems(self, *, manage_hooks: bool) -> list[str]:
        where = f"{self._kind} {self._name}"
        problems = self._scope_problems()
        with self._call(f"read {where}"):
            try:
                self._read_target()
            except GitlabError as exc:
                if exc.response_code == 404:
                    return [*problems, f"{where} was not found, or {self.bot_username} cannot see it"]
                raise
        role = self._own_role()
        need, purpose = (
            (_role(self._hook_level), "to manage its webhooks") if manage_hooks else (REVIEWER, "to review")
        )
        if role.rank < need.rank:
            problems.append(
                f"{self.bot_username} is {_article(role)} on {where}; the bot needs at least {need} {purpose}"
            )
        return problems

    def ensure_webhook(self, url: str, secret: str, events: Sequence[str] | None = None) -> str:
        wanted = list(events) if events is not None else [event.name for event in WEBHOOK_EVENTS]
        data: dict[str, Any] = {
            "url": url,
            "token": secret,
            "enable_ssl_verification": True,
            "push_events": False,
        }
        data |= dict.fromkeys(wanted, True)
        with self._call(f"set up the webhook of {self._kind} {self._name}"):
            hook = self._hook(url)
            if hook is None:
                self._target.hooks.create(data, retry_transient_errors=False)  # a repeat would make two
                return CREATED
            self._target.hooks.update(hook["id"], data)
        return UPDATED

    def webhook_problems(self, url: str) -> list[str]:
        where = f"{self._kind} {self._name}"
        with self._call(f"read the webhooks of {where}"):
            try:
                hook = self._hook(url)
            except GitlabError as exc:
                if exc.response_code in (403, 404):
                    need = _role(self._hook_level)
                    return [
                        f"cannot read the webhooks of {where}: {self.bot_username} needs {need} to see them"
                    ]
                raise
        if hook is None:
            return [f"{where} has no webhook to {url}"]
        problems = []
        missing = [event.label for event in WEBHOOK_EVENTS if not hook.get(event.name)]
        if missing:
            problems.append(f"the webhook does not send {', '.join(missing)}")
        alert = str(hook.get("alert_status") or "executable")
        if alert != "executable":  # GitLab stops a hook whose deliveries keep failing
            problems.append(f"GitLab has {alert.replace('_', ' ')} the webhook after failed deliveries")
        return problems

    def _hook(self, url: str) -> dict[str, Any] | None:
        """The webhook at ``url`` (its attributes), None when there is none."""
        hooks = self._target.hooks.list(get_all=True)
        return next((dict(hook.attributes) for hook in hooks if hook.attributes.get("url") == url), None)

    def _scope_problems(self) -> list[str]:
        """What the token's scopes lack; nothing when GitLab does not say (not a personal, project or
        group access token, or a GitLab too old for ``/personal_access_tokens/self``)."""
        try:
            token = self._gl.http_get("/personal_access_tokens/self")
        except (GitlabError, requests.RequestException):
            return []
        scopes = [str(scope) for scope in cast(dict[str, Any], token).get("scopes") or []]
        if "api" in scopes:
            return []
        return [f"the token lacks the api scope (it has: {', '.join(scopes) or 'none'})"]

    def _own_role(self) -> Role:
        """The bot's role on the target, inherited membership included; an administrator's is owner."""
        user = self._gl.user
        assert user is not None
        if user.attributes.get("is_admin"):
            return Role.OWNER
        with self._call(f"read the membership of {self.bot_username}"):
            try:
                member = self._target.members_all.get(user.id)
            except GitlabError as exc:
                if exc.response_code == 404:
                    return Role.NONE
                raise
        return _role(int(member.access_level))

    # --- plumbing

    @property
    def _where(self) -> str:
        return f"GitLab {self.url}, {self._kind} {self._name}"

    def _remember_retry_after(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        value = response.headers.get("Retry-After", "")
        self._last.retry_after = float(value) if value.isdigit() else None

    @contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        """Turns python-gitlab's and requests' errors into a ForgeError saying where, what and why."""
        try:
            yield
        except GitlabError as exc:
            code = exc.response_code
            retryable = code is not None and (code == 429 or code >= 500)
            hint = _HINTS.get(code or 0, "try again later" if retryable else "")
            raise ForgeError(
                f"{self._where}: could not {operation}: HTTP {code}: {_message(exc)}"
                + (f" ({hint})" if hint else ""),
                retryable=retryable,
                retry_after_s=getattr(self._last, "retry_after", None) if retryable else None,
            ) from exc
        except requests.RequestException as exc:
            raise ForgeError(
                f"{self._where}: could not {operation}: GitLab is unreachable ({exc}); try again later",
                retryable=True,
            ) from exc


class GitLabGroup(_GitLabAccount):
    """One GitLab group, for its group webhook (every project under it); ``group_path`` is its full path."""

    _kind = "group"
    _hook_level = 50  # Owner: GitLab lets only a group's owners manage its webhooks

    def __init__(self, url: str, token: str, group_path: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(url, token, group_path, timeout_s=timeout_s)
        self.group = group_path
        self._group = self._gl.groups.get(group_path, lazy=True)

    @property
    def _target(self) -> Group:
        return self._group

    def _read_target(self) -> None:
        self._gl.groups.get(self.group)


class GitLabForge(_GitLabAccount):
    """One GitLab project, authenticated as the bot; ``project`` is ``group/name`` or a numeric id."""

    _kind = "project"
    _hook_level = 40  # Maintainer

    def __init__(self, url: str, token: str, project: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(url, token, project, timeout_s=timeout_s)
        self.project = project
        self._project = self._gl.projects.get(project, lazy=True)
        self._web_url: str | None = None  # the project's web address, read once by ``comment_url``

    @property
    def _target(self) -> Project:
        return self._project

    def _read_target(self) -> None:
        self._gl.projects.get(self.project)

    def merge_request(self, number: int) -> MergeRequest:
        with self._call(f"read merge request !{number}"):
            mr = self._project.mergerequests.get(number)
            newest = next(iter(mr.diffs.list(get_all=False, per_page=1)), None)  # the diff versions
        latest = newest.attributes if newest is not None else {}
        if latest.get("head_commit_sha") != mr.sha:
            # GitLab builds a push's diff version in the background, a few seconds after the webhook.
            raise ForgeError(
                f"{self._where}: merge request !{number} is at {mr.sha} but GitLab has not prepared "
                "its diff yet; try again in a few seconds",
                retryable=True,
                retry_after_s=5.0,
            )
        return MergeRequest(
            number=number,
            title=str(mr.title),
            state=_STATES[str(mr.state)],
            draft=bool(mr.draft),
            author=str(mr.author["username"]),
            head_sha=str(latest["head_commit_sha"]),
            base_sha=str(latest["base_commit_sha"]),
            start_sha=str(latest["start_commit_sha"]),
        )

    def open_merge_requests(self, updated_since: datetime | None) -> list[MergeRequest]:
        filters: dict[str, Any] = {"state": "opened", "order_by": "updated_at", "sort": "desc"}
        if updated_since is not None:
            filters["updated_after"] = updated_since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        with self._call("list the open merge requests"):
            listed = self._project.mergerequests.list(get_all=True, per_page=100, **filters)
        return [
            MergeRequest(
                number=int(mr.iid),
                title=str(mr.title),
                state=_STATES[str(mr.state)],
                draft=bool(mr.draft),
                author=str(mr.author["username"]),
                head_sha=str(mr.sha),
                base_sha="",  # the list has no diff version: ``merge_request`` reads it
                updated_at=datetime.fromisoformat(str(mr.updated_at)),
            )
            for mr in listed
        ]

    def diff(self, mr: MergeRequest) -> str:
        """``git diff`` text rebuilt from GitLab's per-file diffs (which omit the header lines).

        A file whose diff GitLab left out (``too_large``, ``collapsed``) appears with its header and
        no hunks, and an ``omission_note`` before the diff gives ``parse_diff`` the reason it lists
        the file as skipped for."""
        path = f"/projects/{self._project.encoded_id}/merge_requests/{mr.number}/diffs"
        with self._call(f"read the diff of merge request !{mr.number}"):
            entries = self._gl.http_list(path, get_all=True)
        notes, patches = [], []
        for entry in cast(list[dict[str, Any]], entries):
            omitted = [flag for flag in ("too_large", "collapsed") if entry.get(flag)]
            if omitted and not entry.get("diff"):
                reason = f"GitLab shows no diff for it ({', '.join(omitted)})"
                log.warning(
                    "%s: merge request !%s: %s: %s", self._where, mr.number, entry["new_path"], reason
                )
                notes.append(omission_note(str(entry["new_path"]), reason))
            patches.append(_file_patch(entry))
        return "".join(notes) + "".join(patches)

    def post_review(self, mr: MergeRequest, diff: Diff, comments: list[InlineComment]) -> list[PostedComment]:
        """One discussion per comment, in order. A 5xx while posting raises (retryable) rather than
        re-posting blindly: GitLab may have created the note before failing, and the job's retry
        finds what was posted through ``bot_comments``."""
        files = {file.path: file for file in diff.files}
        return [self._post(mr, files.get(comment.path), comment) for comment in comments]

    def bot_comments(self, number: int) -> list[BotComment]:
        # Every note, a plain one included, belongs to a discussion (plain ones have ``individual_note``).
        with self._call(f"list the discussions of merge request !{number}"):
            discussions = self._mr(number).discussions.list(get_all=True)
        found = []
        for discussion in discussions:
            notes: list[dict[str, Any]] = discussion.attributes["notes"]
            resolvable = [note for note in notes if note.get("resolvable")]
            resolved = bool(resolvable) and all(note.get("resolved") for note in resolvable)
            for note in notes:
                marker = own_marker(note.get("body") or "", note["author"]["username"], self.bot_username)
                if marker is None:
                    continue
                kind, fingerprint = marker
                body = str(note["body"])
                found.append(
                    BotComment(str(note["id"]), str(discussion.id), kind, fingerprint, body, resolved)
                )
        return found

    def upsert_summary(self, number: int, body: str, existing: BotComment | None) -> str:
        mr = self._mr(number)
        if existing is not None:
            with self._call(f"edit the summary note {existing.comment_id} of merge request !{number}"):
                try:
                    mr.notes.update(existing.comment_id, {"body": body})
                    return existing.comment_id
                except GitlabError as exc:
                    if exc.response_code != 404:
                        raise
            # Someone deleted it: a summary must exist, so post it again.
            log.info("%s: summary note %s is gone; posting a new one", self._where, existing.comment_id)
        with self._call(f"post the summary note on merge request !{number}"):
            note = mr.notes.create({"body": body}, retry_transient_errors=False)
        return str(note.id)

    def update_comment(self, number: int, comment: BotComment, body: str) -> None:
        with self._call(f"edit note {comment.comment_id} of merge request !{number}"):
            self._mr(number).notes.update(comment.comment_id, {"body": body})

    def resolve_comment(self, number: int, comment: BotComment) -> None:
        if comment.thread_id is None:
            raise ForgeError(
                f"note {comment.comment_id} has no discussion id; GitLab resolves discussions",
                retryable=False,
            )
        with self._call(f"resolve discussion {comment.thread_id} of merge request !{number}"):
            self._mr(number).discussions.update(comment.thread_id, {"resolved": True})

    def poll_feedback(self, number: int, etag: str | None = None) -> tuple[PolledFeedback | None, str | None]:
        # Awards arrive as Emoji Hook webhooks; a discussion's resolution does not. GitLab's notes API
        # has no conditional requests, so there is no ETag to use.
        del etag
        threads = {c.thread_id: c.resolved for c in self.bot_comments(number) if c.thread_id}
        return PolledFeedback(resolved=threads), None

    def file_at(self, path: str, sha: str) -> str | None:
        check_file_request(path, sha)
        # python-gitlab percent-encodes the whole path (slashes too), as the files API wants.
        with self._call(f"read {untrusted.terminal(path)} at {sha[:12]}"):
            try:
                chunks = self._project.files.raw(path, ref=sha, streamed=True, iterator=True, chunk_size=8192)
            except GitlabError as exc:
                if exc.response_code == 404:  # no such file (or commit) there
                    return None
                raise
            data = bytearray()
            for chunk in chunks:  # streamed: a huge file is never read past the cap
                data += chunk
                if len(data) > MAX_FILE_BYTES:
                    raise too_large(self._where, path, sha)
        return decode_text(bytes(data))

    def add_labels(self, number: int, labels: list[str]) -> None:
        wanted = checked_labels(labels)
        if not wanted:
            return
        # add_labels leaves the labels already there (and GitLab creates the project label when missing)
        with self._call(f"add labels to merge request !{number}"):
            self._project.mergerequests.update(number, {"add_labels": ",".join(wanted)})

    def set_commit_status(
        self, sha: str, state: CommitState, description: str, target_url: str | None
    ) -> None:
        wanted = _COMMIT_STATES[state]
        data = {"state": wanted, "name": STATUS_NAME, **status_fields(sha, description, target_url)}
        with self._call(f"set the {STATUS_NAME} status of commit {sha[:12]}"):
            try:  # a repeat does no harm, so python-gitlab may retry it
                self._project.commits.get(sha, lazy=True).statuses.create(data)
            except GitlabError as exc:
                if not _already_in(exc, wanted):
                    raise

    def comment_url(self, number: int, comment_id: str) -> str:
        """From the project's ``web_url`` (read once): the address people see, which the numeric id
        the bot may know the project by, or the URL the bot reaches GitLab at, may not tell."""
        if self._web_url is None:
            with self._call(f"read project {self.project}"):
                self._web_url = str(self._gl.projects.get(self.project).web_url).rstrip("/")
        note = urllib.parse.quote(comment_id, safe="")
        return f"{self._web_url}/-/merge_requests/{number}#note_{note}"

    def member_role(self, username: str) -> Role:
        with self._call(f"read the membership of {username}"):
            users = self._gl.users.list(username=username, get_all=False)
            if not users:
                return Role.NONE
            try:  # members/all: direct, inherited from groups and invited groups alike
                member = self._project.members_all.get(users[0].id)
            except GitlabError as exc:
                if exc.response_code == 404:
                    return Role.NONE
                raise
        return _role(int(member.access_level))

    def acknowledge(self, number: int, reply_to: str, thread_id: str | None, body: str) -> None:
        if thread_id is None:
            raise ForgeError(
                f"note {reply_to} has no discussion id; GitLab replies go to discussions", retryable=False
            )
        mr = self._mr(number)
        with self._call(f"react to note {reply_to} of merge request !{number}"):
            try:
                mr.notes.get(reply_to, lazy=True).awardemojis.create(
                    {"name": "eyes"}, retry_transient_errors=False
                )
            except GitlabError as exc:
                if "already" not in str(exc.error_message).lower():  # a retried job: the 👀 is there
                    raise
        with self._call(f"reply in discussion {thread_id} of merge request !{number}"):
            mr.discussions.get(thread_id, lazy=True).notes.create(
                {"body": body}, retry_transient_errors=False
            )

    # --- posting, with its fallbacks

    def _post(self, mr: MergeRequest, file: FileDiff | None, comment: InlineComment) -> PostedComment:
        if file is None:
            return self._post_general(mr, comment, f"{comment.path} is not among the diff's reviewed files")
        why: list[str] = []
        if comment.line is not None:
            line = file.line(comment.side, comment.line)
            if line is None:
                why.append(f"line {comment.line} ({comment.side} side) is not in the diff")
            else:
                try:
                    ids = self._discussion(mr, comment.body, _line_position(mr, file, line))
                    return PostedComment(comment.fingerprint, *ids, Placement.INLINE)
                except _Refused as exc:
                    why.append(f"GitLab refused the line position: {exc}")
        try:
            ids = self._discussion(mr, _on_line(comment) + comment.body, _file_position(mr, file))
            return PostedComment(comment.fingerprint, *ids, Placement.FILE, "; ".join(why) or None)
        except _Refused as exc:
            why.append(f"GitLab refused the file position: {exc}")
        return self._post_general(mr, comment, "; ".join(why))

    def _post_general(self, mr: MergeRequest, comment: InlineComment, why: str) -> PostedComment:
        place = f"{comment.path}:{comment.line}" if comment.line is not None else comment.path
        ids = self._discussion(mr, f"{untrusted.code(place)}\n\n{comment.body}", None)  # the MR author's name
        return PostedComment(comment.fingerprint, *ids, Placement.GENERAL, why)

    def _discussion(self, mr: MergeRequest, body: str, position: dict[str, Any] | None) -> tuple[str, str]:
        """(first note id, discussion id) of a new discussion; _Refused if GitLab rejects the position."""
        data: dict[str, Any] = {"body": body} if position is None else {"body": body, "position": position}
        with self._call(f"post a discussion on merge request !{mr.number}"):
            try:
                discussion = self._mr(mr.number).discussions.create(data, retry_transient_errors=False)
            except GitlabError as exc:
                if position is not None and exc.response_code in _REFUSED:
                    raise _Refused(_message(exc)) from exc
                raise
        return str(discussion.attributes["notes"][0]["id"]), str(discussion.id)

    # --- plumbing

    def _mr(self, number: int) -> ProjectMergeRequest:  # lazy: its managers, without a GET
        return self._project.mergerequests.get(number, lazy=True)


# GitLab's access levels, highest first; Minimal Access (5) and Planner (15) count as the level below.
_LEVELS = (
    (50, Role.OWNER),
    (40, Role.MAINTAINER),
    (30, Role.DEVELOPER),
    (20, Role.REPORTER),
    (10, Role.GUEST),
)


def _role(access_level: int) -> Role:
    return next((role for level, role in _LEVELS if access_level >= level), Role.NONE)


def _article(role: Role) -> str:
    """``a developer``, ``an owner``, ``not a member``."""
    if role is Role.NONE:
        return "not a member"
    return f"{'an' if role.value[0] in 'aeiou' else 'a'} {role}"


def _line_position(mr: MergeRequest, file: FileDiff, line: DiffLine) -> dict[str, Any]:
    # GitLab's rule: added -> new_line only, removed -> old_line only, context -> both.
    position = _file_position(mr, file) | {"position_type": "text"}
    if line.kind is not LineKind.ADDED:
        position["old_line"] = line.old_no
    if line.kind is not LineKind.REMOVED:
        position["new_line"] = line.new_no
    return position


def _file_position(mr: MergeRequest, file: FileDiff) -> dict[str, Any]:
    return {
        "position_type": "file",
        "base_sha": mr.base_sha,
        "start_sha": mr.start_sha,
        "head_sha": mr.head_sha,
        "old_path": file.old_path or file.path,  # GitLab gives an added file its new path on both sides
        "new_path": file.path,
    }


def _on_line(comment: InlineComment) -> str:
    """What a file-level note about a line says first, since its position cannot."""
    if comment.line is None:
        return ""
    return f"Line {comment.line}{' (removed)' if comment.side == Side.OLD else ''}:\n\n"


def _already_in(exc: GitlabError, state: str) -> bool:
    """Whether ``exc`` is GitLab's refusal to move a status to the state it already has."""
    found = _NO_TRANSITION.search(_message(exc)) if exc.response_code == 400 else None
    return found is not None and found.group(1) == state


def _message(exc: GitlabError) -> str:
    """GitLab's message, flattened: ``{"line_code": ["can't be blank"]}`` -> ``line_code can't be blank``."""
    message = exc.error_message
    if isinstance(message, dict):
        return "; ".join(
            f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in message.items()
        )
    return str(message)


def _file_patch(entry: dict[str, Any]) -> str:
    """One file of a ``git diff`` from GitLab's diff entry: the header git writes, then GitLab's hunks."""
    old, new = str(entry["old_path"]), str(entry["new_path"])
    a_mode, b_mode = str(entry["a_mode"]), str(entry["b_mode"])
    lines = [f"diff --git {quote_path('a/' + old)} {quote_path('b/' + new)}"]
    if entry["new_file"]:
        lines.append(f"new file mode {b_mode}")
    elif entry["deleted_file"]:
        lines.append(f"deleted file mode {a_mode}")
    elif a_mode != b_mode:
        lines += [f"old mode {a_mode}", f"new mode {b_mode}"]
    if entry["renamed_file"]:
        lines += [f"rename from {quote_path(old)}", f"rename to {quote_path(new)}"]
    body = str(entry.get("diff") or "")
    if body.startswith("@@"):  # hunks; anything else (GitLab's "Binary files ... differ") goes as is
        lines.append("--- " + ("/dev/null" if entry["new_file"] else quote_path("a/" + old)))
        lines.append("+++ " + ("/dev/null" if entry["deleted_file"] else quote_path("b/" + new)))
    header = "\n".join(lines) + "\n"
    return header + body + ("" if not body or body.endswith("\n") else "\n")
