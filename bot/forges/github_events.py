"""GitHub's webhooks: the ``X-Hub-Signature-256`` check, the delivery id, and payload → ``WebhookEvent``.

Events handled: ``pull_request`` (opened, reopened, synchronize, ready_for_review, closed),
``pull_request_review_comment`` (replies to the bot's comments), ``pull_request_review_thread``
(resolved / unresolved) and ``issue_comment`` on a pull request that links to or quotes a finding;
for a GitHub App, ``installation`` and ``installation_repositories`` (the repositories it serves).
Reactions fire no webhook on GitHub: they are polled (``GitHubForge.feedback``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bot.events import Installation, Signal, SignalKind, WebhookEvent, quoted_text, signal_from_reply
from bot.forges.base import parse_marker


def secret_matches(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-hub-signature-256", "").encode(), expected.encode())


def delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    return headers.get("x-github-delivery") or hashlib.sha256(body).hexdigest()


def parse(headers: Mapping[str, str], payload: dict[str, Any]) -> WebhookEvent:
    event = _parse(headers.get("x-github-event", ""), payload)
    installation = payload.get("installation")
    installation_id = installation.get("id") if isinstance(installation, dict) else None
    if isinstance(installation_id, int) and event.installation_id is None:  # sent by an App
        return replace(event, installation_id=installation_id)
    return event


def _parse(event: str, payload: dict[str, Any]) -> WebhookEvent:
    path = str(payload.get("repository", {}).get("full_name", ""))
    actor = str(payload.get("sender", {}).get("login", ""))
    if event in ("installation", "installation_repositories"):
        return _installation(event, actor, payload)
    if event == "pull_request_review_comment":
        return _reply(path, actor, payload)
    if event == "pull_request_review_thread":
        return _thread(path, actor, payload)
    if event == "issue_comment":
        return _issue_comment(path, actor, payload)
    if event != "pull_request":
        return WebhookEvent(path, actor, ignored=f"event {event or 'unnamed'!r} is not handled")
    action = payload.get("action")
    pull = payload.get("pull_request", {})
    number = pull.get("number")
    if action == "closed" and isinstance(number, int):  # merged or not
        return WebhookEvent(path, actor, number=number, closed=True)
    route = _review(path, actor, action, pull)
    if action == "reopened" and isinstance(number, int):  # polled again, reviewed unless a draft
        return replace(route, number=number, closed=False)
    return route


def _repositories(payload: dict[str, Any], key: str) -> tuple[str, ...]:
    listed = payload.get(key) or []
    return tuple(
        str(repo["full_name"]) for repo in listed if isinstance(repo, dict) and repo.get("full_name")
    )


def _installation(event: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    """An App installed, uninstalled, suspended or given repositories: no repository of its own
    (``project_path`` is empty); what changed is in ``installation``."""
    action, installation_id = payload.get("action"), payload.get("installation", {}).get("id")
    if not isinstance(installation_id, int):
        return WebhookEvent("", actor, ignored=f"{event} event without an installation id")
    if event == "installation_repositories" and action in ("added", "removed"):
        change = Installation(
            installation_id,
            added=_repositories(payload, "repositories_added"),
            removed=_repositories(payload, "repositories_removed"),
        )
    elif action in ("created", "new_permissions_accepted"):
        change = Installation(installation_id, added=_repositories(payload, "repositories"))
    elif action in ("deleted", "suspend"):
        change = Installation(installation_id, disable_all=True)
    elif action == "unsuspend":
        change = Installation(installation_id, enable_all=True)
    else:
        return WebhookEvent("", actor, ignored=f"{event} action {action!r} changes no repository")
    return WebhookEvent("", actor, installation=change, installation_id=installation_id)


def _review(path: str, actor: str, action: Any, pull: dict[str, Any]) -> WebhookEvent:
    if action not in ("opened", "reopened", "synchronize", "ready_for_review"):
        return WebhookEvent(path, actor, ignored=f"pull request action {action!r} needs no review")
    if pull.get("draft"):
        return WebhookEvent(path, actor, ignored="pull request is a draft")
    number, head = pull.get("number"), pull.get("head", {}).get("sha")
    if not isinstance(number, int) or not head:
        return WebhookEvent(path, actor, ignored="pull request event without number or head sha")
    return WebhookEvent(path, actor, number=number, head_sha=str(head))


def _reply(path: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    comment = payload.get("comment", {})
    parent = comment.get("in_reply_to_id")
    if parent is None:
        return WebhookEvent(path, actor, ignored="review comment that answers no comment")
    source = f"github:comment:{comment.get('id')}"
    if payload.get("action") == "deleted":  # a withdrawn reply, or a withdrawn command
        return WebhookEvent(
            path, actor, signal=Signal(SignalKind.REPLY, "", actor, source, comment_id=str(parent))
        )
    text = str(comment.get("body", ""))
    signal = signal_from_reply(text, actor, source, str(comment.get("id")), comment_id=str(parent))
    return WebhookEvent(path, actor, signal=signal)


def _thread(path: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    thread = payload.get("thread", {})
    comments = thread.get("comments") or []
    action = payload.get("action")
    if not comments or action not in ("resolved", "unresolved"):
        return WebhookEvent(path, actor, ignored=f"review thread action {action!r} is not feedback")
    value = "true" if action == "resolved" else "false"
    source = f"github:thread:{thread.get('node_id')}"
    signal = Signal(SignalKind.RESOLVED, value, actor, source, comment_id=str(comments[0].get("id")))
    return WebhookEvent(path, actor, signal=signal)


def _linked_comments(repo: str, text: str) -> set[str]:
    """The comments of ``repo``'s pull requests that ``text`` links to, by the adapter's comment ids:
    a review comment (GitHub's "Copy link": ``…/pull/N#discussion_r<id>``, or ``…/pull/N/files#r<id>``)
    is ``"<id>"``, a pull request comment (``…/pull/N#issuecomment-<id>``) ``"issuecomment-<id>"``."""
    link = re.compile(rf"/{re.escape(repo)}/pull/\d+(?:/files)?#(discussion_r|r|issuecomment-)(\d+)\b", re.I)
    return {
        (f"issuecomment-{number}" if kind.lower() == "issuecomment-" else number)
        for kind, number in link.findall(text)
    }


def _issue_comment(path: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    """A comment in a pull request's conversation, tied to a finding by a link to the bot's comment,
    or else by quoting the text of one finding (matched when recorded: see ``quoted_findings``)."""
    issue, comment, action = payload.get("issue", {}), payload.get("comment", {}), payload.get("action")
    if not issue.get("pull_request"):
        return WebhookEvent(path, actor, ignored="comment on an issue, not a pull request")
    if action not in ("created", "edited", "deleted"):
        return WebhookEvent(path, actor, ignored=f"issue comment action {action!r} is not feedback")
    text = str(comment.get("body") or "")
    if parse_marker(text) is not None:
        return WebhookEvent(path, actor, ignored="a comment of the bot's own (it carries the bot's marker)")
    linked = _linked_comments(path, text)
    if len(linked) > 1:
        return WebhookEvent(
            path, actor, ignored=f"links {len(linked)} comments; feedback must name one finding"
        )
    comment_id = linked.pop() if linked else None
    number, quoted = issue.get("number"), quoted_text(text)
    if comment_id is None and not (quoted and isinstance(number, int)):
        return WebhookEvent(
            path, actor, ignored="pull request comment neither links nor quotes a comment of the bot"
        )
    # Tied by the link when there is one; else by the quote, matched to a finding once it is recorded;
    # either way to a finding of this pull request only (a link may point into another one).
    mr_number: int | None = number if isinstance(number, int) else None
    quote: str | None = quoted if comment_id is None else None
    source = f"github:issuecomment:{comment.get('id')}"
    if action == "deleted":  # a withdrawn reply, or a withdrawn command
        withdrawn = Signal(SignalKind.REPLY, "", actor, source, comment_id, mr_number=mr_number, quote=quote)
        return WebhookEvent(path, actor, signal=withdrawn)
    reply_id = f"issuecomment-{comment.get('id')}"  # the GitHub adapter's id for a pull request comment
    signal = signal_from_reply(
        text, actor, source, reply_id, comment_id=comment_id, mr_number=mr_number, quote=quote
    )
    return WebhookEvent(path, actor, signal=signal)
