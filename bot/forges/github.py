"""GitHub behind the forge protocol (``base.Forge``), through PyGithub.

Choices worth knowing:

- **Comment ids.** A review comment is its number (``"123"``); an issue comment (the summary, and a
  finding that fell back to a general comment) is ``"issuecomment-123"``, GitHub's own anchor for it,
  so edits go to the right endpoint without asking GitHub.
- **The diff** is rebuilt from the PR's files list, which GitHub caps at 3000 files: past that, the
  text starts with ``# reviewbot:`` lines saying how many files are missing (``parse_diff`` and git
  ignore text before the first ``diff --git``), and a warning is logged. A file GitHub sends without
  a patch (binary, or a text diff too large for GitHub to show) gets git's own line for a diff it
  will not show, ``Binary files a/x and b/x differ``, so ``parse_diff`` sets it aside; a too-large
  text file is also named in the ``# reviewbot:`` lines.
- **Posting.** All findings go in one review (GitHub's secondary limit is 80 content-creating requests
  a minute). Anchors not on a diff line become file-level comments before posting. If GitHub still
  refuses the review (422), it is retried once with every comment file-level; if that fails too,
  each finding becomes its own issue comment naming ``path:line`` (one each, so each can still be
  edited and reacted to on its own).
- **Resolution.** Review threads are resolved through GraphQL (``resolveReviewThread``), and
  ``bot_comments`` reads ``resolved`` from ``reviewThreads``; an issue comment has no thread, so it is
  edited to say it is outdated.
- **Retries.** Short waits (a 429/403 with ``Retry-After`` up to ``_MAX_WAIT_S``, a 5xx on a
  request that is safe to repeat) are waited out here; longer ones become a ``ForgeError`` with
  ``retry_after_s`` for the queue to honour. A POST answered 5xx is not repeated: it may have
  been applied, and a repeat would post the findings twice.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from github import Auth, Github, GithubException, GithubIntegration, GithubRetry
from github.File import File
from github.GithubException import RateLimitExceededExceedsMaxWait, RateLimitExceededException
from github.Hook import Hook
from github.PullRequest import PullRequest
from github.PullRequestComment import PullRequestComment
from github.Requester import Requester
from urllib3 import Retry
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.response import BaseHTTPResponse

from bot import untrusted
from bot.diff import Diff, omission_note, quote_path
from bot.events import DOWN, GITHUB_PERMISSIONS, UP, Role
from bot.forges import github_web_root
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
    parse_marker,
    status_fields,
    too_large,
)
from bot.forges.base import WEBHOOK_EVENTS as _EVENTS
from bot.models import ForgeKind, Side

log = logging.getLogger(__name__)

WEBHOOK_EVENTS = _EVENTS[ForgeKind.GITHUB]  # the events the bot's webhook must send
MAX_FILES = 3000  # GitHub's pulls/{n}/files lists no more
# A repository's ``permissions`` keys, highest first, and the role names GitHub shows for them
_PERMISSIONS = (
    ("admin", "admin"),
    ("maintain", "maintain"),
    ("push", "write"),
    ("triage", "triage"),
    ("pull", "read"),
)
_PAGE = 100  # the most GitHub lists in one page
_ISSUE_PREFIX = "issuecomment-"
_MAX_WAIT_S = 10.0  # longer waits are the queue's job, not a blocked worker's
_SECONDARY_WAIT_S = 60.0  # GitHub: without retry-after, wait at least a minute
_OUTDATED = "**Outdated:** the code this finding was about has changed.\n\n"
_COMMIT_STATES = {
    CommitState.PENDING: "pending",
    CommitState.SUCCESS: "success",
    CommitState.FAILED: "failure",
    CommitState.ERROR: "error",
}

_THREADS_QUERY = """
query($owner: String!, $name: String!, $number: Int!, $cursor: String) {
  repository(owner: $owner, name: $name) {
    pullRequest(number: $number) {
      reviewThreads(first: 100, after: $cursor) {
        pageInfo { hasNextPage endCursor }
        nodes { id isResolved comments(first: 1) { nodes { databaseId } } }
      }
    }
  }
}
"""
_RESOLVE_MUTATION = """
mutation($threadId: ID!) {
  resolveReviewThread(input: {threadId: $threadId}) { thread { id isResolved } }
}
"""


class _Retry(GithubRetry):
    """GithubRetry that hands long waits to the caller and never repeats a POST that got a 5xx."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method == "POST" and status_code >= 500:
            return False
        return bool(super().is_retry(method, status_code, has_retry_after))

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Retry:
        wait = _retry_after(dict(response.headers)) if response is not None else None
        if wait is not None and wait > _MAX_WAIT_S:
            # urllib3 then returns this response (raise_on_status=False): PyGithub raises with its headers
            raise MaxRetryError(_pool, url or "", ResponseError(f"Retry-After {wait:.0f} s"))  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)  # type: ignore[arg-type]


class GitHubForge:
    """One repository on GitHub (or GitHub Enterprise Server: ``api_url`` ``https://HOST/api/v3``),
    authenticated with a token or as a GitHub App installation."""

    def __init__(
        self,
        api_url: str,
        repo: str,
        *,
        token: str | None = None,
        app_id: int | None = None,
        private_key: str | None = None,
        installation_id: int | None = None,
        timeout_s: float = 10.0,
        seconds_between_writes: float = 1.0,  # GitHub asks for a second between content-creating calls
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo_name = repo
        options: dict[str, Any] = {
            "base_url": self.api_url,
            "timeout": max(1, math.ceil(timeout_s)),  # PyGithub takes whole seconds
            "per_page": 100,  # the most GitHub allows: fewer requests for long lists
            "retry": _Retry(
                total=2,
                backoff_factor=0.5,
                raise_on_status=False,  # the last error response reaches PyGithub, with GitHub's message
                secondary_rate_wait=_SECONDARY_WAIT_S,
                max_rate_limit_wait=_MAX_WAIT_S,
            ),
            "seconds_between_requests": None,
            "seconds_between_writes": seconds_between_writes or None,
        }
        auth: Auth.Auth
        app_auth: Auth.AppAuth | None = None
        if token is not None:
            auth = Auth.Token(token)
        elif app_id is not None and private_key is not None and installation_id is not None:
            app_auth = Auth.AppAuth(app_id, private_key)
            auth = app_auth.get_installation_auth(installation_id)
        else:
            raise ForgeError(
                "GitHubForge needs a token, or app_id, private_key and installation_id", retryable=False
            )
        self._github = Github(auth=auth, lazy=True, **options)  # lazy: no GET before each write
        self._repo = self._github.get_repo(repo)
        with self._calling("read the bot's identity"):
            if app_auth is None:
                self.bot_username: str = self._github.get_user().login
            else:  # an installation token may not read /user; the App (with its JWT) reads /app
                self.bot_username = f"{GithubIntegration(auth=app_auth, **options).get_app().slug}[bot]"

    # --- reading ---

    def merge_request(self, number: int) -> MergeRequest:
        with self._calling(f"read pull request #{number}"):
            pr = self._pr(number)
            return MergeRequest(
                number=number,
                title=pr.title,
                state="merged" if pr.merged else pr.state,
                draft=bool(pr.draft),
                author=pr.user.login,
                head_sha=pr.head.sha,
                base_sha=pr.base.sha,
            )

    def open_merge_requests(self, updated_since: datetime | None) -> list[MergeRequest]:
        found: list[MergeRequest] = []
        with self._calling("list the open pull requests"):
            # Newest activity first, so the pages stop at the first one older than asked for.
            for pr in self._repo.get_pulls(state="open", sort="updated", direction="desc"):
                stamp = pr.updated_at
                updated = stamp.replace(tzinfo=stamp.tzinfo or UTC) if stamp is not None else None
                if updated_since is not None and updated is not None and updated < updated_since:
                    break
                found.append(
                    MergeRequest(
                        number=pr.number,
                        title=pr.title,
                        state=pr.state,
                        draft=bool(pr.draft),
                        author=pr.user.login,
                        head_sha=pr.head.sha,
                        base_sha=pr.base.sha,
                        updated_at=updated,
                    )
                )
        return found

    def diff(self, mr: MergeRequest) -> str:
        with self._calling(f"list the files of pull request #{mr.number}"):
            files = list(self._pr(mr.number).get_files())
            notes = [
                omission_note(f.filename, "GitHub shows no diff for it (too large)")
                for f in files
                if _too_large(f)
            ]
            if len(files) >= MAX_FILES:
                total = self._pr(mr.number).changed_files
                if total > len(files):
                    log.warning(
                        "%s#%d: GitHub lists %d of %d files", self.repo_name, mr.number, len(files), total
                    )
                    reason = f"GitHub lists only {len(files)} of the {total} changed files"
                    notes.insert(0, omission_note(f"({total - len(files)} more files)", reason))
        return "".join(notes) + "".join(_file_patch(f) for f in files if f.status != "unchanged")

    def file_at(self, path: str, sha: str) -> str | None:
        check_file_request(path, sha)
        with self._calling(f"read {untrusted.terminal(path)} at {sha[:12]}"):
            try:
                found = self._repo.get_contents(path, ref=sha)  # PyGithub percent-encodes the path
            except GithubException as exc:
                if exc.status == 404:  # no such file (or commit) there
                    return None
                raise
            if isinstance(found, list) or found.type != "file":  # a directory, a symlink, a submodule
                return None
            if found.size > MAX_FILE_BYTES:  # past 1 MB GitHub sends no content at all
                raise too_large(self._where(), path, sha)
            return decode_text(found.decoded_content)

    def bot_comments(self, number: int) -> list[BotComment]:
        found: list[BotComment] = []
        with self._calling(f"list the comments of pull request #{number}"):
            review = [c for c in self._pr(number).get_review_comments() if self._is_bot(c.user.login, c.body)]
            resolved = {cid for cid, (_, done) in self._threads(number).items() if done} if review else set()
            for c in review:
                found.append(_bot_comment(str(c.id), c.body, resolved=c.id in resolved))
            for ic in self._repo.get_issue(number).get_comments():
                if self._is_bot(ic.user.login, ic.body):
                    found.append(_bot_comment(f"{_ISSUE_PREFIX}{ic.id}", ic.body, resolved=False))
        return found

    # --- writing ---

    def post_review(self, mr: MergeRequest, diff: Diff, comments: list[InlineComment]) -> list[PostedComment]:
        placed: list[tuple[Placement, str | None]] = [_placement(c, diff) for c in comments]
        in_review = [i for i, (placement, _) in enumerate(placed) if placement is not Placement.GENERAL]
        ids: dict[int, str] = {}
        if in_review:
            refused = self._post_review(mr, [(i, comments[i], placed[i][0]) for i in in_review], ids)
            if refused is not None:
                log.warning("%s#%d: GitHub refused the review: %s", self.repo_name, mr.number, refused)
                file_level = [(i, comments[i], Placement.FILE) for i in in_review]
                again = self._post_review(mr, file_level, ids)
                fallback = (
                    (Placement.FILE, f"GitHub refused the review ({refused}); posted on the file")
                    if again is None
                    else (
                        Placement.GENERAL,
                        f"GitHub refused the review ({refused}) and its file-level retry ({again});"
                        " posted as a pull request comment",
                    )
                )
                for i in in_review:
                    placed[i] = fallback
        for i, comment in enumerate(comments):
            if placed[i][0] is Placement.GENERAL:
                with self._calling(f"comment on pull request #{mr.number}"):
                    posted = self._repo.get_issue(mr.number).create_comment(_general_body(comment))
                ids[i] = f"{_ISSUE_PREFIX}{posted.id}"
        return [
            PostedComment(c.fingerprint, ids[i], None, placed[i][0], placed[i][1])
            for i, c in enumerate(comments)
        ]

    def add_labels(self, number: int, labels: list[str]) -> None:
        wanted = checked_labels(labels)
        if not wanted:
            return
        # GitHub adds to what is there (a repeat changes nothing) and creates a label the repository lacks
        with self._calling(f"add labels to pull request #{number}"):
            self._repo.get_issue(number).add_to_labels(*wanted)

    def set_commit_status(
        self, sha: str, state: CommitState, description: str, target_url: str | None
    ) -> None:
        payload = {"state": _COMMIT_STATES[state], "context": STATUS_NAME}
        payload |= status_fields(sha, description, target_url)
        operation = f"set the {STATUS_NAME} status of commit {sha[:12]}"
        # GitHub keeps every status it is sent and shows the latest: a repeat is no error
        with self._calling(operation):
            try:
                path = f"/repos/{self.repo_name}/statuses/{sha}"
                self._requester.requestJsonAndCheck("POST", path, input=payload)
            except GithubException as exc:
                error = self._error(operation, exc)
                if exc.status in (403, 404) and not error.retryable:  # e.g. an App installed before the gate
                    hint = "statuses need write access (a GitHub App: Commit statuses: write)"
                    raise ForgeError(f"{error}; {hint}", retryable=False) from exc
                raise

    def comment_url(self, number: int, comment_id: str) -> str:
        """Built from the API's address, without a request: GitHub's web pages are at github.com for
        api.github.com, at ``https://HOST`` for GitHub Enterprise Server's ``https://HOST/api/v3``."""
        anchor = comment_id if comment_id.startswith(_ISSUE_PREFIX) else f"discussion_r{comment_id}"
        where = f"{github_web_root(self.api_url)}/{self.repo_name}/pull/{number}"
        return f"{where}#{urllib.parse.quote(anchor, safe='-_')}"

    def upsert_summary(self, number: int, body: str, existing: BotComment | None) -> str:
        with self._calling(f"post the summary on pull request #{number}"):
            if existing is not None:
                try:
                    self._edit(number, existing.comment_id, body)
                    return existing.comment_id
                except GithubException as exc:
                    if exc.status != 404:
                        raise
                    log.info("%s#%d: the summary comment is gone; posting a new one", self.repo_name, number)
            return f"{_ISSUE_PREFIX}{self._repo.get_issue(number).create_comment(body).id}"

    def update_comment(self, number: int, comment: BotComment, body: str) -> None:
        with self._calling(f"edit comment {comment.comment_id} on pull request #{number}"):
            self._edit(number, comment.comment_id, body)

    def resolve_comment(self, number: int, comment: BotComment) -> None:
        if comment.comment_id.startswith(_ISSUE_PREFIX):  # no thread to resolve: say so in the comment
            if not comment.body.startswith(_OUTDATED):
                self.update_comment(number, comment, _OUTDATED + comment.body)
            return
        operation = f"resolve the thread of comment {comment.comment_id} on pull request #{number}"
        with self._calling(operation):
            thread = self._threads(number).get(int(comment.comment_id))
            if thread is None:
                raise ForgeError(f"{self._where()}: {operation}: no review thread holds it", retryable=False)
            thread_id, resolved = thread
            if not resolved:
                self._requester.graphql_query(_RESOLVE_MUTATION, {"threadId": thread_id})

    def poll_feedback(self, number: int, etag: str | None = None) -> tuple[PolledFeedback | None, str | None]:
        """Every page of the review comments, each a conditional request on its own ETag (a 304 is
        free): a reaction changes the reaction counts on its comment's page, so only changed pages
        are read, and a reaction on the last page is seen as surely as one on the first. ``etag``
        holds each page's ETag and size (JSON); the result lists the comments of changed pages only."""
        known = _page_etags(etag)
        pages: list[tuple[str, int]] = []
        reactions: dict[str, frozenset[tuple[str, str]]] = {}
        path = f"/repos/{self.repo_name}/pulls/{number}/comments"
        with self._calling(f"read the reactions on pull request #{number}"):
            while True:
                before = known[len(pages)] if len(pages) < len(known) else None
                headers, data = self._requester.requestJsonAndCheck(
                    "GET",
                    path,
                    parameters={"per_page": _PAGE, "page": len(pages) + 1},
                    headers={"If-None-Match": before[0]} if before else None,
                )
                if data is None and before is not None:  # 304: this page is as it was
                    pages.append(before)
                else:
                    comments = [self._github.create_from_raw_data(PullRequestComment, raw) for raw in data]
                    tag = next((v for k, v in headers.items() if k.lower() == "etag"), "")
                    pages.append((str(tag), len(comments)))
                    reactions.update(
                        (str(c.id), _thumbs(c)) for c in comments if c.user.login == self.bot_username
                    )
                if pages[-1][1] < _PAGE:  # the last page; a full one may have a new one after it
                    break
        changed = pages != known
        return (PolledFeedback(reactions=reactions) if changed else None), json.dumps(pages)

    def member_role(self, username: str) -> Role:
        path = f"/repos/{self.repo_name}/collaborators/{urllib.parse.quote(username)}/permission"
        with self._calling(f"read the permission of {username}"):
            try:
                _, data = self._requester.requestJsonAndCheck("GET", path)
            except GithubException as exc:
                if exc.status == 404:  # no such user
                    return Role.NONE
                raise
        # role_name says triage and maintain too; a custom role's name is none of these: its base permission
        names = (data.get("role_name"), data.get("permission"))
        return next((GITHUB_PERMISSIONS[n] for n in names if n in GITHUB_PERMISSIONS), Role.NONE)

    def acknowledge(self, number: int, reply_to: str, thread_id: str | None, body: str) -> None:
        with self._calling(f"acknowledge comment {reply_to} on pull request #{number}"):
            if reply_to.startswith(_ISSUE_PREFIX):  # written in the conversation: answered there
                issue = self._repo.get_issue(number)
                theirs = issue.get_comment(int(reply_to.removeprefix(_ISSUE_PREFIX)))
                theirs.create_reaction("eyes")
                issue.create_comment(f"@{theirs.user.login} {body}")  # the mention tells them
                return
            pr = self._pr(number)
            pr.get_review_comment(int(reply_to)).create_reaction("eyes")  # GitHub keeps one per user
            # GitHub takes replies to a thread's first comment only (the bot's finding, ``thread_id``).
            pr.create_review_comment_reply(int(thread_id or reply_to), body)

    # --- connecting: the token's access, the webhook ---

    def access_problems(self, *, manage_hooks: bool) -> list[str]:
        where = f"repository {self.repo_name}"
        with self._calling(f"read the {where}"):
            try:
                headers, data = self._requester.requestJsonAndCheck("GET", f"/repos/{self.repo_name}")
            except GithubException as exc:
                if exc.status == 404:  # GitHub's answer to a private repository the token cannot see, too
                    return [f"{where} was not found, or {self.bot_username} cannot see it"]
                raise
        problems = []
        scopes = {k.lower(): v for k, v in headers.items()}.get("x-oauth-scopes")
        if scopes is not None:  # a classic token; a fine-grained or an App's token sends no scopes
            granted = sorted(scope.strip() for scope in scopes.split(",") if scope.strip())
            private = bool(data.get("private"))
            if "repo" not in granted and (private or "public_repo" not in granted):
                need = "repo scope" if private else "repo (or public_repo) scope"
                problems.append(f"the token lacks the {need} (it has: {', '.join(granted) or 'none'})")
        permissions = data.get("permissions")
        if isinstance(permissions, dict):  # the token's user's; an App's installation token has none
            held = next((name for key, name in _PERMISSIONS if permissions.get(key)), "no")
            if manage_hooks and not permissions.get("admin"):
                problems.append(
                    f"{self.bot_username} has {held} permission on {where}; managing its webhooks needs admin"
                )
            elif not permissions.get("push"):
                problems.append(
                    f"{self.bot_username} has {held} permission on {where}; the bot needs write"
                    " (pull requests and issues write, contents read)"
                )
        return problems

    def ensure_webhook(self, url: str, secret: str, events: Sequence[str] | None = None) -> str:
        wanted = list(events) if events is not None else [event.name for event in WEBHOOK_EVENTS]
        config = {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"}
        with self._calling(f"set up the webhook of repository {self.repo_name}"):
            hook = self._hook(url)
            if hook is None:
                self._repo.create_hook("web", config, wanted, active=True)
                return CREATED
            hook.edit("web", config, events=wanted, active=True)
        return UPDATED

    def webhook_problems(self, url: str) -> list[str]:
        where = f"repository {self.repo_name}"
        with self._calling(f"read the webhooks of {where}"):
            try:
                hook = self._hook(url)
            except GithubException as exc:
                if exc.status in (403, 404):
                    return [
                        f"cannot read the webhooks of {where}: {self.bot_username} needs admin to see them"
                    ]
                raise
            if hook is None:
                return [f"{where} has no webhook to {url}"]
            problems = []
            missing = [
                e.label for e in WEBHOOK_EVENTS if e.name not in hook.events and "*" not in hook.events
            ]
            if missing:
                problems.append(f"the webhook does not send {', '.join(missing)}")
            if not hook.active:
                problems.append("the webhook is inactive")
            if hook.config.get("content_type") != "json":
                problems.append("the webhook's content type is not application/json")
            code = hook.last_response.code if hook.last_response is not None else None
            if code is not None and not 200 <= code < 300:
                said = hook.last_response.message
                problems.append(f"its last delivery got HTTP {code}" + (f" ({said})" if said else ""))
        return problems

    def _hook(self, url: str) -> Hook | None:
        return next((hook for hook in self._repo.get_hooks() if hook.config.get("url") == url), None)

    # --- helpers ---

    @property
    def _requester(self) -> Requester:
        return self._github.requester

    def _pr(self, number: int) -> PullRequest:
        return self._repo.get_pull(number)  # lazy: no request until an attribute is read

    def _edit(self, number: int, comment_id: str, body: str) -> None:
        if comment_id.startswith(_ISSUE_PREFIX):
            self._repo.get_issue(number).get_comment(int(comment_id.removeprefix(_ISSUE_PREFIX))).edit(body)
        else:
            self._pr(number).get_review_comment(int(comment_id)).edit(body)

    def _is_bot(self, login: str, body: str) -> bool:
        return own_marker(body, login, self.bot_username) is not None

    def _post_review(
        self, mr: MergeRequest, items: list[tuple[int, InlineComment, Placement]], ids: dict[int, str]
    ) -> str | None:
        """Post one review; fills ``ids``. Returns GitHub's message if it refused the review (422)."""
        payload = {
            "commit_id": mr.head_sha,
            "event": "COMMENT",
            "body": f"reviewbot: {len(items)} finding(s) on {mr.head_sha[:12]}.",  # COMMENT needs a body
            "comments": [_review_comment(c, placement) for _, c, placement in items],
        }
        with self._calling(f"post a review on pull request #{mr.number}"):
            try:
                _, review = self._requester.requestJsonAndCheck(
                    "POST", f"/repos/{self.repo_name}/pulls/{mr.number}/reviews", input=payload
                )
            except GithubException as exc:
                if exc.status == 422:
                    return _github_message(exc)
                raise
            posted = list(self._pr(mr.number).get_single_review_comments(review["id"]))
        if len(posted) != len(items):
            raise ForgeError(
                f"{self._where()}: review {review['id']} on pull request #{mr.number} was posted, but GitHub"
                f" lists {len(posted)} of its {len(items)} comments",
                retryable=False,
            )
        # GitHub does not promise our order: match each comment to its finding by path and body
        for i, comment, _ in items:
            match = next((p for p in posted if p.path == comment.path and p.body == comment.body), posted[0])
            posted.remove(match)
            ids[i] = str(match.id)
        return None

    def _threads(self, number: int) -> dict[int, tuple[str, bool]]:
        """Review threads of the PR by their first comment's id: (thread node id, resolved)."""
        owner, name = self.repo_name.split("/", 1)
        threads: dict[int, tuple[str, bool]] = {}
        cursor: str | None = None
        while True:
            variables = {"owner": owner, "name": name, "number": number, "cursor": cursor}
            _, data = self._requester.graphql_query(_THREADS_QUERY, variables)
            page = data["data"]["repository"]["pullRequest"]["reviewThreads"]
            for node in page["nodes"]:
                first = node["comments"]["nodes"]
                if first:
                    threads[first[0]["databaseId"]] = (node["id"], node["isResolved"])
            if not page["pageInfo"]["hasNextPage"]:
                return threads
            cursor = page["pageInfo"]["endCursor"]

    def _where(self) -> str:
        return f"GitHub {self.api_url}, {self.repo_name}"

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        """Turns PyGithub's and the network's exceptions into ForgeError naming where and what."""
        try:
            yield
        except GithubException as exc:
            raise self._error(operation, exc) from exc
        except OSError as exc:  # requests' exceptions are OSErrors: refused, reset, timed out
            raise ForgeError(f"{self._where()}: {operation}: {exc}", retryable=True) from exc

    def _error(self, operation: str, exc: GithubException) -> ForgeError:
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        wait = _retry_after(headers)
        rate_limited = isinstance(exc, RateLimitExceededException) or exc.status == 429 or wait is not None
        if isinstance(exc, RateLimitExceededExceedsMaxWait) and exc.wait is not None:
            wait = exc.wait
        elif rate_limited and wait is None and exc.status == 403:
            wait = _SECONDARY_WAIT_S
        retryable = exc.status >= 500 or exc.status == 429 or (exc.status == 403 and rate_limited)
        message = f"{self._where()}: {operation}: {exc.status} {_github_message(exc)}"
        if exc.status == 401:
            message += " (the token is invalid, expired or revoked)"
        elif exc.status == 403 and not retryable:
            message += " (check the token or the App's permissions)"
        return ForgeError(message, retryable=retryable, retry_after_s=wait if retryable else None)


def _retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or a date) or, at 0 remaining, ``x-ratelimit-reset``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is not None:
        if value.strip().isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    reset = lowered.get("x-ratelimit-reset")
    if lowered.get("x-ratelimit-remaining") == "0" and reset is not None and reset.isdigit():
        return max(0.0, int(reset) - time.time())
    return None


def _github_message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    errors = [e if isinstance(e, str) else e.get("message") or str(e) for e in data.get("errors") or []]
    # a proxy's HTML error page reaches PyGithub as {"data": text}
    message = data.get("message") or exc.message or " ".join(str(data.get("data", "")).split())[:200]
    message = message or "no message"
    return f"{message}: {'; '.join(errors)}" if errors else str(message)


def _placement(comment: InlineComment, diff: Diff) -> tuple[Placement, str | None]:
    """Where a finding can go, decided before posting, and why when not inline."""
    file = next((f for f in diff.files if f.path == comment.path), None)
    if file is None and not any(s.path == comment.path for s in diff.skipped):
        return Placement.GENERAL, f"{comment.path} is not among the pull request's files; posted as a comment"
    if comment.line is None:
        return Placement.FILE, None
    if file is None or file.line(comment.side, comment.line) is None:
        where = f"line {comment.line} ({comment.side} side)"
        return Placement.FILE, f"{where} is not in the diff of {comment.path}; posted on the file"
    return Placement.INLINE, None


def _review_comment(comment: InlineComment, placement: Placement) -> dict[str, Any]:
    if placement is Placement.FILE:
        return {"path": comment.path, "body": comment.body, "subject_type": "file"}
    side = "LEFT" if comment.side == Side.OLD else "RIGHT"
    return {"path": comment.path, "body": comment.body, "line": comment.line, "side": side}


def _general_body(comment: InlineComment) -> str:
    where = comment.path if comment.line is None else f"{comment.path}:{comment.line}"
    old = " (old side)" if comment.line is not None and comment.side == Side.OLD else ""
    return f"**{untrusted.code(where)}**{old}\n\n{comment.body}"  # a file name is the PR author's


def _bot_comment(comment_id: str, body: str, *, resolved: bool) -> BotComment:
    marker = parse_marker(body)
    assert marker is not None  # callers keep only marked comments
    return BotComment(comment_id, None, marker[0], marker[1], body, resolved)


def _thumbs(comment: PullRequestComment) -> frozenset[tuple[str, str]]:
    """Who stands behind the 👍/👎 on a comment; the counts in the comments list spare the request
    for a comment without any."""
    if not (comment.reactions.get(UP) or comment.reactions.get(DOWN)):
        return frozenset()
    return frozenset((r.user.login, r.content) for r in comment.get_reactions() if r.content in (UP, DOWN))


def _page_etags(etag: str | None) -> list[tuple[str, int]]:
    """(ETag, comments) of each page, as ``poll_feedback`` stored them; none for anything else."""
    try:
        stored = json.loads(etag or "[]")
        return [(str(tag), int(size)) for tag, size in stored]
    except (ValueError, TypeError):
        return []


def _too_large(file: File) -> bool:
    # GitHub counts lines for a text file even when it leaves the patch out; a binary file has none
    return file.patch is None and file.changes > 0


def _file_patch(file: File) -> str:
    """One file of a ``git diff``, with the headers ``parse_diff`` reads status and paths from."""
    new = file.filename
    old = file.previous_filename if file.status in ("renamed", "copied") and file.previous_filename else new
    lines = [f"diff --git {quote_path('a/' + old)} {quote_path('b/' + new)}"]
    before, after = quote_path("a/" + old), quote_path("b/" + new)
    if file.status == "added":
        lines.append("new file mode 100644")
        before = "/dev/null"
    elif file.status == "removed":
        lines.append("deleted file mode 100644")
        after = "/dev/null"
    elif old != new:
        verb = "copy" if file.status == "copied" else "rename"
        lines += [f"{verb} from {quote_path(old)}", f"{verb} to {quote_path(new)}"]
    if file.patch is None:
        # git's words for a diff it will not show; a rename without a patch or counted lines is taken for a
        # pure rename (GitHub's list cannot tell it from a renamed and changed binary file)
        if file.changes > 0 or file.status not in ("renamed", "copied"):
            lines.append(f"Binary files {before} and {after} differ")
    else:
        lines += [f"--- {before}", f"+++ {after}", file.patch.removesuffix("\n")]
    return "\n".join(lines) + "\n"
