"""Webhook intake: verify, record the delivery, decide, enqueue, answer — never waiting on a forge or a model.

The steps, in order (DESIGN.md §6): size limit (413) → the project whose secret or HMAC matches the
raw body, constant-time (401, nothing stored) → JSON (400) → delivery dedupe (a repeat answers 200
and does nothing) → the forge's parser turns the payload into a ``WebhookEvent`` → dispatch: record a
close, ignore (with the reason), record feedback, or queue a review. Everything forge-specific is in
``bot.forges.WEBHOOK_FORMATS``; this module never looks inside a payload.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session, col, select

from bot import metrics
from bot.events import Signal, WebhookEvent
from bot.feedback.signals import apply_signal, quoted_findings
from bot.forges import WEBHOOK_FORMATS, WebhookFormat
from bot.models import Delivery, ForgeKind, Project, Review, ReviewStatus, utcnow

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


class Jobs(Protocol):
    """What the intake hands work to (the queue)."""

    def enqueue_review(self, review_id: int) -> None: ...

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None: ...

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None: ...


class _Refused(Exception):
    """A delivery answered before it is recorded (or whose record is rolled back)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _answer(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def handle_delivery(
    engine: sa.Engine, jobs: Jobs, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes
) -> JSONResponse:
    """Everything after the size check; runs in a worker thread (database calls block)."""
    try:
        with Session(engine) as session:
            project = _authenticated_project(session, webhook, headers, body)
            payload = _json_object(body)
            delivery = _record_delivery(session, webhook, headers, body)
            event = webhook.parse(headers, payload)
            if event.project_path != project.path:  # a delivery for a project we don't serve: not recorded
                raise _Refused(404, f"project {event.project_path!r} is not registered with this secret")
            return _dispatch(session, jobs, project, delivery, event)
    except _Refused as refused:
        return _answer(refused.status, refused.detail)


def _authenticated_project(
    session: Session, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes
) -> Project:
    """The project whose webhook secret signed ``body``: each project has its own."""
    projects = session.exec(select(Project).where(Project.forge == webhook.kind)).all()
    if not projects:
        raise _Refused(404, f"no {webhook.kind} project is registered here")
    project = next((p for p in projects if webhook.secret_matches(headers, body, p.webhook_secret)), None)
    if project is None:
        raise _Refused(401, "signature or token does not match any project's webhook secret")
    return project


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _Refused(400, f"malformed JSON payload: {exc}") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "malformed JSON payload: the payload is not a JSON object")
    return payload


def _record_delivery(
    session: Session, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes
) -> Delivery:
    """The delivery's row; a delivery seen before is answered as a duplicate and does nothing."""
    delivery = Delivery(forge=webhook.kind, delivery_id=webhook.delivery_id(headers, body))
    session.add(delivery)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        raise _Refused(200, "duplicate delivery, already handled") from None
    return delivery


def _why_ignored(project: Project, event: WebhookEvent) -> str | None:
    if event.ignored is not None:
        return event.ignored
    if not project.enabled:
        return "project is disabled"
    if project.bot_username and event.actor == project.bot_username:
        return "event caused by the bot itself"
    return None


def _dispatch(
    session: Session, jobs: Jobs, project: Project, delivery: Delivery, event: WebhookEvent
) -> JSONResponse:
    assert project.id is not None
    if event.closed is not None and event.number is not None:  # a fact, whoever caused it
        _mark_closed(session, project.id, event.number, event.closed)
    ignored = _why_ignored(project, event)
    if ignored is not None:
        delivery.outcome = f"ignored: {ignored}"
        session.commit()
        log.info("%s delivery %s ignored: %s", delivery.forge, delivery.delivery_id, ignored)
        return _answer(200, f"ignored: {ignored}")
    if event.signal is not None:
        return _feedback(session, jobs, project.id, delivery, event.signal)
    if event.closed:
        delivery.outcome = f"recorded: merge request {event.number} merged or closed"
        session.commit()
        return _answer(200, f"{delivery.outcome}; feedback polling ends a few days from now")
    return _queue_review(session, jobs, project.id, delivery, event)


def _queue_review(
    session: Session, jobs: Jobs, project_id: int, delivery: Delivery, event: WebhookEvent
) -> JSONResponse:
    assert event.number is not None
    assert event.head_sha is not None
    review = Review(project_id=project_id, mr_number=event.number, head_sha=event.head_sha)
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


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than ``MAX_BODY_BYTES`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


def webhook_router(engine: sa.Engine, jobs: Jobs) -> APIRouter:
    """``POST /webhooks/gitlab`` and ``POST /webhooks/github``."""
    routes = APIRouter()

    async def receive(request: Request, webhook: WebhookFormat) -> JSONResponse:
        with metrics.ACK_SECONDS.labels(webhook.kind.value).time():
            body = await _read_body(request)
            if body is None:
                response = _answer(413, f"payload larger than {MAX_BODY_BYTES} bytes")
            else:
                headers = {k.lower(): v for k, v in request.headers.items()}
                response = await run_in_threadpool(handle_delivery, engine, jobs, webhook, headers, body)
        outcome = _OUTCOMES.get(response.status_code, "other")
        metrics.DELIVERIES.labels(webhook.kind.value, outcome).inc()
        return response

    @routes.post("/webhooks/gitlab", status_code=202)
    async def gitlab_webhook(request: Request) -> JSONResponse:
        return await receive(request, WEBHOOK_FORMATS[ForgeKind.GITLAB])

    @routes.post("/webhooks/github", status_code=202)
    async def github_webhook(request: Request) -> JSONResponse:
        return await receive(request, WEBHOOK_FORMATS[ForgeKind.GITHUB])

    return routes
