"""The GitLab forge: merge requests, their diffs and the bot's discussions, through python-gitlab.

GitLab's rules that shape this module (see DESIGN.md §6): a positioned discussion needs the SHAs of
the latest diff version, and ``new_line`` only on an added line, ``old_line`` only on a removed one,
both on a context line; GitLab answers anything else with ``400 line_code can't be blank``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import gitlab
import requests
from gitlab.exceptions import GitlabError
from gitlab.v4.objects import ProjectMergeRequest

from bot import untrusted
from bot.diff import Diff, DiffLine, FileDiff, LineKind, omission_note, quote_path
from bot.events import Role
from bot.forges.base import (
    BotComment,
    ForgeError,
    InlineComment,
    MergeRequest,
    Placement,
    PolledFeedback,
    PostedComment,
    own_marker,
)
from bot.models import Side

log = logging.getLogger(__name__)

# Per request. A 429 is retried after its Retry-After (python-gitlab sleeps that long), a 5xx or a
# network error after 0.1 s, then 0.2 s; past that the job fails with a retryable ForgeError and the
# queue retries it later, rather than python-gitlab's default of 10 retries holding a worker.
MAX_RETRIES = 2
_STATES = {"opened": "open", "locked": "open", "closed": "closed", "merged": "merged"}
_REFUSED = (400, 422)  # GitLab's answers to a position it cannot place
_HINTS = {
    401: "check the bot's access token",
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


class GitLabForge:
    """One GitLab project, authenticated as the bot; ``project`` is ``group/name`` or a numeric id."""

    def __init__(self, url: str, token: str, project: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.project = project
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
        self._project = self._gl.projects.get(project, lazy=True)
        with self._call("read the bot's own user (GET /user)"):
            self._gl.auth()
        assert self._gl.user is not None  # auth() sets it or raises
        self.bot_username: str = str(self._gl.user.username)

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

    @property
    def _where(self) -> str:
        return f"GitLab {self.url}, project {self.project}"

    def _mr(self, number: int) -> ProjectMergeRequest:  # lazy: its managers, without a GET
        return self._project.mergerequests.get(number, lazy=True)

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
