"""GitLab's webhooks: the shared-secret check, the delivery id, and payload → ``WebhookEvent``.

Events handled: ``Merge Request Hook`` (open, reopen, push as ``update`` with ``oldrev``, ready,
close, merge), ``Note Hook`` (replies in the bot's discussions) and ``Emoji Hook`` (👍/👎 on its notes).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bot.events import DOWN, UP, Signal, SignalKind, WebhookEvent, signal_from_reply


def secret_matches(headers: Mapping[str, str], _body: bytes, secret: str) -> bool:
    return hmac.compare_digest(headers.get("x-gitlab-token", "").encode(), secret.encode())


def delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    # Idempotency-Key is the same across GitLab's retries (17.4+); the event UUID before that.
    return (
        headers.get("idempotency-key")
        or headers.get("x-gitlab-event-uuid")
        or hashlib.sha256(body).hexdigest()
    )


def parse(headers: Mapping[str, str], payload: dict[str, Any]) -> WebhookEvent:
    path = str(payload.get("project", {}).get("path_with_namespace", ""))
    actor = str(payload.get("user", {}).get("username", ""))
    event = headers.get("x-gitlab-event", "")
    if event == "Emoji Hook":
        return _award(path, actor, payload)
    if event == "Note Hook":
        return _note(path, actor, payload)
    if event != "Merge Request Hook":
        return WebhookEvent(path, actor, ignored=f"event {event or 'unnamed'!r} is not handled")
    attributes = payload.get("object_attributes", {})
    action, number = attributes.get("action"), attributes.get("iid")
    if action in ("close", "merge") and isinstance(number, int):
        return WebhookEvent(path, actor, number=number, closed=True)
    route = _review(path, actor, attributes, payload.get("changes", {}))
    if action == "reopen" and isinstance(number, int):  # polled again, reviewed unless a draft
        return replace(route, number=number, closed=False)
    return route


def _review(path: str, actor: str, attributes: dict[str, Any], changes: dict[str, Any]) -> WebhookEvent:
    action = attributes.get("action")
    number, head = attributes.get("iid"), attributes.get("last_commit", {}).get("id")
    if attributes.get("draft") or attributes.get("work_in_progress"):
        return WebhookEvent(path, actor, ignored="merge request is a draft")
    became_ready = changes.get("draft", {}).get("previous") is True
    if action in ("open", "reopen") or (action == "update" and (attributes.get("oldrev") or became_ready)):
        if not isinstance(number, int) or not head:
            return WebhookEvent(path, actor, ignored="merge request event without iid or last commit")
        return WebhookEvent(path, actor, number=number, head_sha=str(head))
    return WebhookEvent(path, actor, ignored=f"merge request action {action!r} needs no review")


THUMBS = {"thumbsup": UP, "thumbsdown": DOWN}


def _award(path: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    award = payload.get("object_attributes", {})
    if (
        award.get("awardable_type") != "Note"
        or payload.get("note", {}).get("noteable_type") != "MergeRequest"
    ):
        return WebhookEvent(path, actor, ignored="emoji not on a merge request comment")
    value = THUMBS.get(str(award.get("name")))
    if value is None:
        return WebhookEvent(path, actor, ignored=f"emoji {award.get('name')!r} is not feedback")
    if award.get("action") == "revoke":
        value = ""
    source = f"gitlab:award:{award.get('id')}"
    signal = Signal(SignalKind.REACTION, value, actor, source, comment_id=str(award.get("awardable_id")))
    return WebhookEvent(path, actor, signal=signal)


def _note(path: str, actor: str, payload: dict[str, Any]) -> WebhookEvent:
    note = payload.get("object_attributes", {})
    if note.get("noteable_type") != "MergeRequest" or note.get("system"):
        return WebhookEvent(path, actor, ignored="comment not on a merge request")
    if not note.get("discussion_id"):
        return WebhookEvent(path, actor, ignored="comment without a discussion id (GitLab older than 15)")
    source = f"gitlab:note:{note.get('id')}"
    text, discussion = str(note.get("note", "")), str(note["discussion_id"])
    signal = signal_from_reply(text, actor, source, str(note.get("id")), thread_id=discussion)
    return WebhookEvent(path, actor, signal=signal)
