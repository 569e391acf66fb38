"""Webhook intake: verify, record the delivery, decide, enqueue, answer — never waiting on a forge or a model.

Order, per DESIGN.md §6: size limit (413) → secret or HMAC on the raw body, constant-time (401,
nothing stored) → JSON (400) → delivery dedupe (a repeat answers 200 and does nothing) → route.
The secret identifies the project: each project has its own, and the payload must name that project.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session, col, select

from bot import metrics
from bot.feedback import (
    DOWN,
    UP,
    Signal,
    SignalKind,
    apply_signal,
    quoted_findings,
    quoted_text,
    signal_from_reply,
)
from bot.forges.base import parse_marker
from bot.models import Delivery, Forge, Project, Review, ReviewStatus, utcnow

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub's own cap on webhook payloads
_OUTCOMES = {
    202: "queued",
    200: "handled",  # ignored with a reason, a duplicate, or feedback recorded
    400: "malformed",
    401: "unauthorized",
    404: "unknown_project",
    413: "too_large",
}


@dataclass(frozen=True)
class Route:
    """What a verified delivery asks for: a review of ``number`` at ``head_sha``, a signal to record,
    that merge request's closing or reopening (``closed``), or nothing (and why)."""

    project_path: str
    actor: str
    number: int | None = None
    head_sha: str | None = None
    signal: Signal | None = None  # a reviewer's reaction to record
    closed: bool | None = None  # merged or closed (True), reopened (False): feedback polling follows it
    ignored: str | None = None


class Jobs(Protocol):
    """What the intake hands work to (the queue)."""

    def enqueue_review(self, review_id: int) -> None: ...

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None: ...

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None: ...


def gitlab_secret_matches(headers: Mapping[str, str], _body: bytes, secret: str) -> bool:
    return hmac.compare_digest(headers.get("x-gitlab-token", "").encode(), secret.encode())


def github_signature_matches(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-hub-signature-256", "").encode(), expected.encode())


def gitlab_delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    # Idempotency-Key is the same across GitLab's retries (17.4+); the event UUID before that.
    return (
        headers.get("idempotency-key")
        or headers.get("x-gitlab-event-uuid")
        or hashlib.sha256(body).hexdigest()
    )


def github_delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    return headers.get("x-github-delivery") or hashlib.sha256(body).hexdigest()


def route_gitlab(headers: Mapping[str, str], payload: dict[str, Any]) -> Route:
    path = str(payload.get("project", {}).get("path_with_namespace", ""))
    actor = str(payload.get("user", {}).get("username", ""))
    event = headers.get("x-gitlab-event", "")
    if event == "Emoji Hook":
        return _gitlab_award(path, actor, payload)
    if event == "Note Hook":
        return _gitlab_note(path, actor, payload)
    if event != "Merge Request Hook":
        return Route(path, actor, ignored=f"event {event or 'unnamed'!r} is not handled")
    attributes = payload.get("object_attributes", {})
    action, number = attributes.get("action"), attributes.get("iid")
    if action in ("close", "merge") and isinstance(number, int):
        return Route(path, actor, number=number, closed=True)
    route = _gitlab_review(path, actor, attributes, payload.get("changes", {}))
    if action == "reopen" and isinstance(number, int):  # polled again, reviewed unless a draft
        return replace(route, number=number, closed=False)
    return route


def _gitlab_review(path: str, actor: str, attributes: dict[str, Any], changes: dict[str, Any]) -> Route:
    action = attributes.get("action")
    number, head = attributes.get("iid"), attributes.get("last_commit", {}).get("id")
    if attributes.get("draft") or attributes.get("work_in_progress"):
        return Route(path, actor, ignored="merge request is a draft")
    became_ready = changes.get("draft", {}).get("previous") is True
    if action in ("open", "reopen") or (action == "update" and (attributes.get("oldrev") or became_ready)):
        if not isinstance(number, int) or not head:
            return Route(path, actor, ignored="merge request event without iid or last commit")
        return Route(path, actor, number=number, head_sha=str(head))
    return Route(path, actor, ignored=f"merge request action {action!r} needs no review")


GITLAB_THUMBS = {"thumbsup": UP, "thumbsdown": DOWN}


def _gitlab_award(path: str, actor: str, payload: dict[str, Any]) -> Route:
    award = payload.get("object_attributes", {})
    if (
        award.get("awardable_type") != "Note"
        or payload.get("note", {}).get("noteable_type") != "MergeRequest"
    ):
        return Route(path, actor, ignored="emoji not on a merge request comment")
    value = GITLAB_THUMBS.get(str(award.get("name")))
    if value is None:
        return Route(path, actor, ignored=f"emoji {award.get('name')!r} is not feedback")
    if award.get("action") == "revoke":
        value = ""
    source = f"gitlab:award:{award.get('id')}"
    signal = Signal(SignalKind.REACTION, value, actor, source, comment_id=str(award.get("awardable_id")))
    return Route(path, actor, signal=signal)


def _gitlab_note(path: str, actor: str, payload: dict[str, Any]) -> Route:
    note = payload.get("object_attributes", {})
    if note.get("noteable_type") != "MergeRequest" or note.get("system"):
        return Route(path, actor, ignored="comment not on a merge request")
    if not note.get("discussion_id"):
        return Route(path, actor, ignored="comment without a discussion id (GitLab older than 15)")
    source = f"gitlab:note:{note.get('id')}"
    text, discussion = str(note.get("note", "")), str(note["discussion_id"])
    signal = signal_from_reply(text, actor, source, str(note.get("id")), thread_id=discussion)
    return Route(path, actor, signal=signal)


def route_github(headers: Mapping[str, str], payload: dict[str, Any]) -> Route:
    path = str(payload.get("repository", {}).get("full_name", ""))
    actor = str(payload.get("sender", {}).get("login", ""))
    event = headers.get("x-github-event", "")
    if event == "pull_request_review_comment":
        return _github_reply(path, actor, payload)
    if event == "pull_request_review_thread":
        return _github_thread(path, actor, payload)
    if event == "issue_comment":
        return _github_issue_comment(path, actor, payload)
    if event != "pull_request":
        return Route(path, actor, ignored=f"event {event or 'unnamed'!r} is not handled")
    action = payload.get("action")
    pull = payload.get("pull_request", {})
    number = pull.get("number")
    if action == "closed" and isinstance(number, int):  # merged or not
        return Route(path, actor, number=number, closed=True)
    route = _github_review(path, actor, action, pull)
    if action == "reopened" and isinstance(number, int):  # polled again, reviewed unless a draft
        return replace(route, number=number, closed=False)
    return route


def _github_review(path: str, actor: str, action: Any, pull: dict[str, Any]) -> Route:
    if action not in ("opened", "reopened", "synchronize", "ready_for_review"):
        return Route(path, actor, ignored=f"pull request action {action!r} needs no review")
    if pull.get("draft"):
        return Route(path, actor, ignored="pull request is a draft")
    number, head = pull.get("number"), pull.get("head", {}).get("sha")
    if not isinstance(number, int) or not head:
        return Route(path, actor, ignored="pull request event without number or head sha")
    return Route(path, actor, number=number, head_sha=str(head))


def _github_reply(path: str, actor: str, payload: dict[str, Any]) -> Route:
    comment = payload.get("comment", {})
    parent = comment.get("in_reply_to_id")
    if parent is None:
        return Route(path, actor, ignored="review comment that answers no comment")
    source = f"github:comment:{comment.get('id')}"
    if payload.get("action") == "deleted":  # a withdrawn reply, or a withdrawn command
        return Route(path, actor, signal=Signal(SignalKind.REPLY, "", actor, source, comment_id=str(parent)))
    text = str(comment.get("body", ""))
    signal = signal_from_reply(text, actor, source, str(comment.get("id")), comment_id=str(parent))
    return Route(path, actor, signal=signal)


def _github_thread(path: str, actor: str, payload: dict[str, Any]) -> Route:
    thread = payload.get("thread", {})
    comments = thread.get("comments") or []
    action = payload.get("action")
    if not comments or action not in ("resolved", "unresolved"):
        return Route(path, actor, ignored=f"review thread action {action!r} is not feedback")
    value = "true" if action == "resolved" else "false"
    source = f"github:thread:{thread.get('node_id')}"
    signal = Signal(SignalKind.RESOLVED, value, actor, source, comment_id=str(comments[0].get("id")))
    return Route(path, actor, signal=signal)


def _linked_comments(repo: str, text: str) -> set[str]:
    """The comments of ``repo``'s pull requests that ``text`` links to, by the adapter's comment ids:
    a review comment (GitHub's "Copy link": ``…/pull/N#discussion_r<id>``, or ``…/pull/N/files#r<id>``)
    is ``"<id>"``, a pull request comment (``…/pull/N#issuecomment-<id>``) ``"issuecomment-<id>"``."""
    link = re.compile(rf"/{re.escape(repo)}/pull/\d+(?:/files)?#(discussion_r|r|issuecomment-)(\d+)\b", re.I)
    return {
        (f"issuecomment-{number}" if kind.lower() == "issuecomment-" else number)
        for kind, number in link.findall(text)
    }


def _github_issue_comment(path: str, actor: str, payload: dict[str, Any]) -> Route:
    """A comment in a pull request's conversation, tied to a finding by a link to the bot's comment,
    or else by quoting the text of one finding (matched when recorded: see ``quoted_findings``)."""
    issue, comment, action = payload.get("issue", {}), payload.get("comment", {}), payload.get("action")
    if not issue.get("pull_request"):
        return Route(path, actor, ignored="comment on an issue, not a pull request")
    if action not in ("created", "edited", "deleted"):
        return Route(path, actor, ignored=f"issue comment action {action!r} is not feedback")
    text = str(comment.get("body") or "")
    if parse_marker(text) is not None:
        return Route(path, actor, ignored="a comment of the bot's own (it carries the bot's marker)")
    linked = _linked_comments(path, text)
    if len(linked) > 1:
        return Route(path, actor, ignored=f"links {len(linked)} comments; feedback must name one finding")
    comment_id = linked.pop() if linked else None
    number, quoted = issue.get("number"), quoted_text(text)
    if comment_id is None and not (quoted and isinstance(number, int)):
        return Route(
            path, actor, ignored="pull request comment neither links nor quotes a comment of the bot"
        )
    # Tied by the link when there is one; else by the quote, matched to a finding once it is recorded.
    mr_number: int | None = number if comment_id is None else None
    quote: str | None = quoted if comment_id is None else None
    source = f"github:issuecomment:{comment.get('id')}"
    if action == "deleted":  # a withdrawn reply, or a withdrawn command
        withdrawn = Signal(SignalKind.REPLY, "", actor, source, comment_id, mr_number=mr_number, quote=quote)
        return Route(path, actor, signal=withdrawn)
    reply_id = f"issuecomment-{comment.get('id')}"  # the GitHub adapter's id for a pull request comment
    signal = signal_from_reply(
        text, actor, source, reply_id, comment_id=comment_id, mr_number=mr_number, quote=quote
    )
    return Route(path, actor, signal=signal)


@dataclass(frozen=True)
class ForgeHooks:
    forge: Forge
    secret_matches: Callable[[Mapping[str, str], bytes, str], bool]
    delivery_id: Callable[[Mapping[str, str], bytes], str]
    route: Callable[[Mapping[str, str], dict[str, Any]], Route]


HOOKS = {
    Forge.GITLAB: ForgeHooks(Forge.GITLAB, gitlab_secret_matches, gitlab_delivery_id, route_gitlab),
    Forge.GITHUB: ForgeHooks(Forge.GITHUB, github_signature_matches, github_delivery_id, route_github),
}


def _answer(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def handle_delivery(
    engine: sa.Engine,
    jobs: Jobs,
    hooks: ForgeHooks,
    headers: Mapping[str, str],
    body: bytes,
) -> JSONResponse:
    """Everything after the size check; runs in a worker thread (database calls block)."""
    with Session(engine) as session:
        projects = session.exec(select(Project).where(Project.forge == hooks.forge)).all()
        if not projects:
            return _answer(404, f"no {hooks.forge} project is registered here")
        project = next((p for p in projects if hooks.secret_matches(headers, body, p.webhook_secret)), None)
        if project is None:
            return _answer(401, "signature or token does not match any project's webhook secret")
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("the payload is not a JSON object")
        except ValueError as exc:
            return _answer(400, f"malformed JSON payload: {exc}")
        delivery = Delivery(forge=hooks.forge, delivery_id=hooks.delivery_id(headers, body))
        session.add(delivery)
        try:
            session.flush()
        except sa.exc.IntegrityError:
            return _answer(200, "duplicate delivery, already handled")
        route = hooks.route(headers, payload)
        if route.project_path != project.path:
            session.rollback()  # a delivery for a project we don't serve is not recorded
            return _answer(404, f"project {route.project_path!r} is not registered with this secret")
        assert project.id is not None
        if route.closed is not None and route.number is not None:  # a fact, whoever caused it
            _mark_closed(session, project.id, route.number, route.closed)
        if route.ignored is None and not project.enabled:
            route = replace(route, ignored="project is disabled")
        if route.ignored is None and project.bot_username and route.actor == project.bot_username:
            route = replace(route, ignored="event caused by the bot itself")
        if route.ignored is not None:
            delivery.outcome = f"ignored: {route.ignored}"
            session.commit()
            log.info("%s delivery %s ignored: %s", hooks.forge, delivery.delivery_id, route.ignored)
            return _answer(200, f"ignored: {route.ignored}")
        if route.signal is not None:
            return _feedback(session, jobs, project.id, delivery, route.signal)
        if route.closed:
            delivery.outcome = f"recorded: merge request {route.number} merged or closed"
            session.commit()
            return _answer(200, f"{delivery.outcome}; feedback polling ends a few days from now")
        assert route.number is not None and route.head_sha is not None
        review = Review(project_id=project.id, mr_number=route.number, head_sha=route.head_sha)
        session.add(review)
        session.flush()
        review_id = review.id
        assert review_id is not None
        delivery.outcome = f"review {review_id} queued"
        session.commit()
    # Queued only once the row is committed: the job must find it. Should enqueueing fail, the
    # review stays QUEUED in the database and the stale-job sweep enqueues it again.
    jobs.enqueue_review(review_id)
    return _answer(202, "review queued", review_id=review_id, review_status=ReviewStatus.QUEUED.value)


def _mark_closed(session: Session, project_id: int, number: int, closed: bool) -> None:
    """Stamp (or clear, on reopening) the close time on every review of that merge request."""
    session.execute(
        sa.update(Review)
        .where(col(Review.project_id) == project_id, col(Review.mr_number) == number)
        .values(mr_closed_at=utcnow() if closed else None)
    )


def _feedback(
    session: Session, jobs: Jobs, project_id: int, delivery: Delivery, signal: Signal
) -> JSONResponse:
    applied = apply_signal(session, project_id, signal)
    if applied is not None:
        finding, changed = applied
        delivery.outcome = f"recorded {signal.kind}"
        session.commit()
        if changed and signal.is_command:
            assert finding.id is not None
            jobs.enqueue_acknowledgement(finding.id, signal)
        return _answer(200, f"feedback recorded: {signal.describe()}")
    if signal.quote is not None and signal.mr_number is not None:
        # Only a review still being posted can add the finding a quote is about; with none in flight the
        # quote is of someone else's comment, or of several findings: said now rather than retried.
        pending = session.exec(
            select(Review.id).where(
                col(Review.project_id) == project_id,
                col(Review.mr_number) == signal.mr_number,
                col(Review.status).in_([ReviewStatus.QUEUED, ReviewStatus.RUNNING]),
            )
        ).first()
        if pending is None:
            found = len(quoted_findings(session, project_id, signal.mr_number, signal.quote))
            why = f"quotes {found} findings of the bot" if found else "quotes no finding of the bot"
            delivery.outcome = f"ignored: pull request comment {why}"
            session.commit()
            return _answer(200, f"ignored: pull request comment {why}: {signal.describe()}")
    # Its finding may not be recorded yet (the review job is still posting): the queue tries again.
    delivery.outcome = "feedback waiting for its finding"
    session.commit()
    assert delivery.id is not None
    jobs.enqueue_feedback(project_id, delivery.id, signal)
    return _answer(202, f"feedback queued until its finding is known: {signal.describe()}")


def router(engine: sa.Engine, jobs: Jobs) -> APIRouter:
    routes = APIRouter()

    async def receive(request: Request, hooks: ForgeHooks) -> JSONResponse:
        with metrics.ACK_SECONDS.labels(hooks.forge.value).time():
            response = await _receive(request, hooks)
        metrics.DELIVERIES.labels(hooks.forge.value, _OUTCOMES.get(response.status_code, "other")).inc()
        return response

    async def _receive(request: Request, hooks: ForgeHooks) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _answer(413, f"payload larger than {MAX_BODY_BYTES} bytes")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > MAX_BODY_BYTES:
                return _answer(413, f"payload larger than {MAX_BODY_BYTES} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await run_in_threadpool(handle_delivery, engine, jobs, hooks, headers, body)

    @routes.post("/webhooks/gitlab", status_code=202)
    async def gitlab_webhook(request: Request) -> JSONResponse:
        return await receive(request, HOOKS[Forge.GITLAB])

    @routes.post("/webhooks/github", status_code=202)
    async def github_webhook(request: Request) -> JSONResponse:
        return await receive(request, HOOKS[Forge.GITHUB])

    return routes
