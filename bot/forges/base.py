"""What the review job needs from a forge; one implementation per forge in this package.

The review pipeline and the jobs use only this module: python-gitlab and PyGithub stay inside
``gitlab.py`` and ``github.py``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from bot import untrusted
from bot.diff import Diff
from bot.events import Role
from bot.models import ForgeKind, Side

_MARKER = re.compile(r"<!-- reviewbot:(?:(summary)|(finding):([0-9a-f]{8,64})) -->")


def finding_marker(fingerprint: str) -> str:
    """Hidden in every inline comment, so a re-review finds, edits or resolves its own comments."""
    return f"<!-- reviewbot:finding:{fingerprint} -->"


SUMMARY_MARKER = "<!-- reviewbot:summary -->"


def parse_marker(body: str) -> tuple[str, str | None] | None:
    """("finding", fingerprint) or ("summary", None) for a bot comment's body, else None.

    Only the exact marker alone on the body's last line counts: the bot writes it there, and the
    text the bot posts for others (``bot.untrusted``) can hold no marker, so a model's review or a
    file name quoting one is never taken for the summary or for another finding."""
    last = (body or "").rstrip().rpartition("\n")[2].strip()
    match = _MARKER.fullmatch(last)
    if match is None:
        return None
    return ("summary", None) if match.group(1) else ("finding", match.group(3))


def own_marker(body: str, author: str, bot_username: str) -> tuple[str, str | None] | None:
    """``parse_marker`` of a comment written by the bot's account; None for anyone else's."""
    return parse_marker(body) if author == bot_username else None


class ForgeError(Exception):
    """A forge call failed. ``retryable``: worth trying again later (5xx, 429, network);
    ``retry_after_s``: what the forge asked us to wait, when it said."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class CommitState(StrEnum):
    """What the bot's commit status (the merge gate) says about a merge request's head."""

    PENDING = "pending"  # a review is running
    SUCCESS = "success"  # nothing at or above the project's gate
    FAILED = "failed"  # a finding at or above the gate
    ERROR = "error"  # the review could not be done


STATUS_NAME = "reviewbot"  # GitLab's status `name`, GitHub's `context`: what branch protection requires
MAX_STATUS_DESCRIPTION = 140  # GitHub's limit; descriptions are cut to it (with "…") on both forges
MAX_FILE_BYTES = 64 * 1024  # the most of a repository file the bot reads (its settings file)
MAX_LABEL_CHARS = 50  # GitHub's limit on a label's name (GitLab's is longer)
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
_UNSAFE_URL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # blanks and control characters
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def repo_path_problem(path: str) -> str | None:
    """Why ``path`` may not name a file the bot reads from a repository, or None when it may. Paths
    come from repositories and settings: only a plain relative path, with no ``.``/``..``/empty
    segment even once percent-decoded (a forge or a proxy decodes ``%2e%2e`` to ``..``), no backslash
    and no control character, reaches a forge or git."""
    shown = untrusted.terminal(untrusted.truncate(path, 200)[0])
    if not path or len(path) > 1024:
        return f"repository path {shown!r}: must be 1 to 1024 characters"
    if _UNPRINTABLE.search(path) or "\\" in path:
        return f"repository path {shown!r}: control characters and backslashes are not allowed"
    spellings = {path}
    for _ in range(3):  # %252e%252e is %2e%2e once decoded, and .. twice
        path = urllib.parse.unquote(path)
        spellings.add(path)
    for spelling in spellings:
        if spelling.startswith("/") or any(s in ("", ".", "..") for s in spelling.split("/")):
            return f"repository path {shown!r}: must be relative, without '.', '..' or empty segments"
    return None


def check_file_request(path: str, sha: str) -> None:
    """ForgeError (not retryable) unless ``path`` is a safe repository path and ``sha`` a commit id."""
    problem = repo_path_problem(path)
    if problem is None and not _COMMIT.fullmatch(sha):
        shown = untrusted.terminal(untrusted.truncate(sha, 80)[0])
        problem = f"commit {shown!r}: not a commit id (7 to 64 lowercase hex digits)"
    if problem is not None:
        raise ForgeError(problem, retryable=False)


def checked_labels(labels: Iterable[str]) -> list[str]:
    """``labels`` without repeats, in order; ForgeError (not retryable) for a name a forge would split
    (a comma: GitLab's list separator) or refuse (empty, too long, unprintable)."""
    unique = list(dict.fromkeys(labels))
    for label in unique:
        if not 0 < len(label) <= MAX_LABEL_CHARS or "," in label or _UNPRINTABLE.search(label):
            shown = untrusted.terminal(untrusted.truncate(label, 80)[0])
            raise ForgeError(
                f"label {shown!r}: must be 1 to {MAX_LABEL_CHARS} printable characters without commas",
                retryable=False,
            )
    return unique


def status_fields(sha: str, description: str, target_url: str | None) -> dict[str, str]:
    """A status's description (one line, cut to ``MAX_STATUS_DESCRIPTION``) and link; ForgeError (not
    retryable) for a ``sha`` that is not a commit id or a link that is not an http(s) address."""
    if not _COMMIT.fullmatch(sha):
        shown = untrusted.terminal(untrusted.truncate(sha, 80)[0])
        raise ForgeError(f"commit {shown!r}: not a commit id (7 to 64 lowercase hex digits)", retryable=False)
    line = untrusted.terminal(description)
    if len(line) > MAX_STATUS_DESCRIPTION:
        line = line[: MAX_STATUS_DESCRIPTION - 1] + "…"
    if target_url is None:
        return {"description": line}
    if not _is_web_address(target_url):
        shown = untrusted.terminal(untrusted.truncate(target_url, 80)[0])
        raise ForgeError(f"status link {shown!r}: not an http(s) address", retryable=False)
    return {"description": line, "target_url": target_url}


def _is_web_address(url: str) -> bool:
    """An http(s) URL with a host, and nothing a forge or a browser would read differently (blanks,
    control characters)."""
    if _UNSAFE_URL.search(url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # a malformed host ("http://[x")
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def decode_text(data: bytes) -> str | None:
    """A file's bytes as text; None when it is not text (a NUL byte, or not UTF-8)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def too_large(where: str, path: str, sha: str) -> ForgeError:
    """The error for a repository file past ``MAX_FILE_BYTES``: not retryable, the file stays as it is."""
    shown = untrusted.terminal(untrusted.truncate(path, 200)[0])
    return ForgeError(
        f"{where}: {shown} at {sha[:12]} is too large: the bot reads files of at most {MAX_FILE_BYTES} bytes",
        retryable=False,
    )


@dataclass(frozen=True)
class MergeRequest:
    number: int  # GitLab MR iid, GitHub PR number
    title: str
    state: str  # "open", "closed" or "merged" on both forges
    draft: bool
    author: str  # username
    head_sha: str
    base_sha: str  # GitLab: latest diff version's base_commit_sha; GitHub: base.sha
    start_sha: str | None = None  # GitLab: latest diff version's start_commit_sha; GitHub: None
    updated_at: datetime | None = None  # last activity (a push, a comment); set by ``open_merge_requests``


class Placement(StrEnum):
    INLINE = "inline"  # on the line
    FILE = "file"  # on the file, no line (GitLab: a note naming path and line; GitHub: subject_type=file)
    GENERAL = "general"  # a plain comment on the MR/PR naming path and line


@dataclass(frozen=True)
class InlineComment:
    """A finding to post; ``line`` None means file-level. ``body`` already holds the marker."""

    fingerprint: str
    path: str
    line: int | None
    side: Side
    body: str


@dataclass(frozen=True)
class PostedComment:
    fingerprint: str
    comment_id: str  # GitLab note id; GitHub review comment id (or issue comment id for GENERAL)
    thread_id: str | None  # GitLab discussion id; GitHub: None
    placement: Placement
    note: str | None = None  # why it was not posted inline, when it was not


@dataclass(frozen=True)
class BotComment:
    """A comment of the bot's own found on the MR/PR (recognized by its marker)."""

    comment_id: str
    thread_id: str | None
    kind: str  # "finding" or "summary"
    fingerprint: str | None
    body: str
    resolved: bool


@dataclass(frozen=True)
class PolledFeedback:
    """One poll of an MR/PR's bot comments."""

    # comment id -> the 👍/👎 standing on it, as (user, "+1" or "-1"); every comment read is a key
    # (GitHub reads only the pages changed since the ETag: a comment not in it is as it was)
    reactions: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    resolved: dict[str, bool] = field(default_factory=dict)  # thread id -> resolved


@dataclass(frozen=True)
class HookEvent:
    """An event the bot's webhook must send: its name in the forge's API (GitLab's hook flag, GitHub's
    event) and what the forge's webhook settings page calls it."""

    name: str
    label: str


# Every event the bot uses, per forge: the one list that webhook creation, its check, `project add`'s
# instructions and README follow (a missing one loses feedback silently).
WEBHOOK_EVENTS: dict[ForgeKind, tuple[HookEvent, ...]] = {
    ForgeKind.GITLAB: (
        HookEvent("merge_requests_events", "Merge request events"),
        HookEvent("note_events", "Comments"),
        HookEvent("emoji_events", "Emoji events"),
    ),
    ForgeKind.GITHUB: (
        HookEvent("pull_request", "Pull requests"),
        HookEvent("pull_request_review_comment", "Pull request review comments"),
        HookEvent("pull_request_review_thread", "Pull request review threads"),
        HookEvent("issue_comment", "Issue comments"),
    ),
}

CREATED, UPDATED = "created", "updated"  # what ``ensure_webhook`` did


class Connection(Protocol):
    """What connecting the bot to a project (or a GitLab group) needs: whether its token may do what the
    bot does there, and the webhook. Problems are plain sentences, one each, for a terminal or a table."""

    bot_username: str

    def access_problems(self, *, manage_hooks: bool) -> list[str]:
        """What the token lacks (scopes, role, permission), or why the target cannot be reached; [] when
        it has all the bot needs, and the right to manage webhooks too when ``manage_hooks``."""
        ...

    def ensure_webhook(self, url: str, secret: str, events: Sequence[str] | None = None) -> str:
        """Create the webhook at ``url``, or update the one already there (secret, events, SSL
        verification on); ``events`` are API names, default every one the bot uses. ``CREATED`` or
        ``UPDATED``."""
        ...

    def webhook_problems(self, url: str) -> list[str]:
        """What is wrong with the webhook at ``url``, read through the API: missing, events missing,
        disabled, failing deliveries; [] when it is fine."""
        ...


class Forge(Connection, Protocol):
    """One project on one forge, authenticated as the bot."""

    def merge_request(self, number: int) -> MergeRequest:
        """Metadata of the MR/PR, with the SHAs of its latest diff version."""
        ...

    def open_merge_requests(self, updated_since: datetime | None) -> list[MergeRequest]:
        """The open MRs/PRs updated at or after ``updated_since`` (all open ones when None), every page,
        newest activity first. Each holds its head and ``updated_at``; its base may be "" (GitLab's
        list does not carry the diff version's SHAs): ask ``merge_request`` before posting on it."""
        ...

    def diff(self, mr: MergeRequest) -> str:
        """The MR/PR's unified diff (``git diff`` format, all files, all pages) at ``mr.head_sha``."""
        ...

    def bot_comments(self, number: int) -> list[BotComment]:
        """Every comment of the bot's on the MR/PR (all pages), with fingerprints."""
        ...

    def post_review(self, mr: MergeRequest, diff: Diff, comments: list[InlineComment]) -> list[PostedComment]:
        """Post the findings. Anchors are validated against ``diff`` first; a position the forge
        refuses falls back to a file-level, then a general comment: every comment is posted exactly
        once and reported in the result, in the order given. GitHub sends them as one review."""
        ...

    def upsert_summary(self, number: int, body: str, existing: BotComment | None) -> str:
        """Create the summary comment, or edit ``existing`` in place; returns its id."""
        ...

    def update_comment(self, number: int, comment: BotComment, body: str) -> None:
        """Edit one of the bot's comments."""
        ...

    def resolve_comment(self, number: int, comment: BotComment) -> None:
        """Mark one of the bot's finding comments resolved/outdated (its line no longer exists)."""
        ...

    def poll_feedback(self, number: int, etag: str | None = None) -> tuple[PolledFeedback | None, str | None]:
        """The reviewers' signals this forge sends no webhook for, on the MR/PR's bot comments, and the
        ETag to send next time; None when nothing changed since ``etag`` (a conditional request,
        which GitHub does not count against the rate limit). GitHub: who reacted 👍/👎 to each bot
        comment (reactions fire no webhook); GitLab: whether each bot discussion is resolved (awards
        arrive as webhooks)."""
        ...

    def member_role(self, username: str) -> Role:
        """``username``'s role on the project (GitLab: access level, inherited membership included;
        GitHub: repository permission); ``Role.NONE`` for a stranger or an unknown user."""
        ...

    def file_at(self, path: str, sha: str) -> str | None:
        """The text of the repository file ``path`` at commit ``sha``; None when it is absent there or
        not text (a directory, a binary file). ForgeError: a path or sha ``check_file_request`` refuses,
        a file past ``MAX_FILE_BYTES`` (neither retryable), or the forge failing."""
        ...

    def add_labels(self, number: int, labels: list[str]) -> None:
        """Add ``labels`` to the MR/PR (the forge creates a label the project lacks); one already
        there stays as it is, so a repeat changes nothing. Names are checked by ``checked_labels``."""
        ...

    def set_commit_status(
        self, sha: str, state: CommitState, description: str, target_url: str | None
    ) -> None:
        """Set the `reviewbot` status of commit `sha`. Idempotent: setting the state it already has
        is not an error.

        ``sha`` must be a commit id and ``target_url`` an http(s) address or None (else ForgeError,
        not retryable, before any request); ``description`` goes on one line, cut to
        ``MAX_STATUS_DESCRIPTION``. GitLab has no error state: ``ERROR`` is ``failed`` there, so the
        description must say why."""
        ...

    def comment_url(self, number: int, comment_id: str) -> str:
        """The web address of one of the bot's comments on the MR/PR (the summary): a link for the status."""
        ...

    def acknowledge(self, number: int, reply_to: str, thread_id: str | None, body: str) -> None:
        """Tell a reviewer their command was heard: 👀 on their comment ``reply_to`` and ``body`` as a
        reply in its thread (GitLab: the discussion ``thread_id``; GitHub: ``thread_id`` is the id of the
        thread's first comment, the bot's finding, since GitHub takes no replies to replies). On GitHub a
        pull request comment (``issuecomment-<id>``) has no thread: ``body`` goes in a new pull request
        comment that mentions its author."""
        ...
