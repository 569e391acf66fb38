"""Webhook intake: verify, record the delivery, decide, enqueue, answer — never waiting on a forge or a model.

The steps, in order (DESIGN.md §6): too many deliveries in flight (503, ``Retry-After``) → size limit
(413) → the credential, checked against secrets held in memory (``ProjectSecrets``), constant-time,
before any database query (401, nothing stored) → JSON (400) → the project: on a project's own URL
(``/webhooks/FORGE/KEY``) the one that key names; on a forge's shared URL, among the projects whose
secret matches, the one the payload names, so projects sharing one secret (GitHub Apps, organisation
and group hooks) all work (404 when none) → delivery dedupe (a repeat answers 200 and does nothing) →
dispatch: record a close, ignore (with the reason), record feedback, or queue a review.
Everything forge-specific is in ``bot.forges.WEBHOOK_FORMATS``; this module never looks inside a payload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
from bot.secrets import SecretBox

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub's own cap on webhook payloads
_OUTCOMES = {
    202: "queued",
    200: "handled",  # ignored with a reason, a duplicate, or feedback recorded
    400: "malformed",
    401: "unauthorized",
    404: "unknown_project",
    413: "too_large",
    503: "overloaded",
}
RETRY_AFTER_S = 5
MAX_AGE_S = 60.0  # secrets in memory are read again this often: a rotated secret stops working by then
REFRESHES_BURST, REFRESHES_PER_S = 10, 1.0  # reloads on a miss: a burst, then at most one per second


class Jobs(Protocol):
    """What the intake hands work to (the queue)."""

    def enqueue_review(self, review_id: int) -> None: ...

    def enqueue_feedback(self, project_id: int, delivery_id: int, signal: Signal) -> None: ...

    def enqueue_acknowledgement(self, finding_id: int, signal: Signal) -> None: ...

    def enqueue_roles(self, project_id: int) -> None: ...


class _Refused(Exception):
    """A delivery answered before it is recorded (or whose record is rolled back)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _answer(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


@dataclass(frozen=True)
class Credential:
    project_id: int
    path: str
    secret: str


class ProjectSecrets:
    """The webhook secrets of every project, opened once and held in memory, so a delivery is
    authenticated before any database query: by webhook key, and by forge and secret (several
    projects may share one). Read on first use, again when older than ``MAX_AGE_S``, and on a miss
    (an unknown key, a secret or project not known yet), with misses' reloads rate-limited by a token
    bucket so unauthenticated traffic costs at most about one query a second."""

    def __init__(self, engine: sa.Engine, box: SecretBox) -> None:
        self.engine, self.box = engine, box
        self._lock = threading.Lock()
        self._by_key: dict[tuple[ForgeKind, str], Credential] = {}
        self._by_secret: dict[ForgeKind, dict[str, list[Credential]]] = {}
        self._loaded_at = -MAX_AGE_S
        self._tokens, self._tokens_at = float(REFRESHES_BURST), time.monotonic()

    def by_key(self, kind: ForgeKind, key: str) -> Credential | None:
        self._fresh()
        return self._by_key.get((kind, key))

    def by_secret(self, kind: ForgeKind) -> dict[str, list[Credential]]:
        self._fresh()
        return self._by_secret.get(kind, {})

    def reload_on_miss(self) -> bool:
        """Read the secrets again if the rate limit allows; whether it did."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(REFRESHES_BURST, self._tokens + (now - self._tokens_at) * REFRESHES_PER_S)
            self._tokens_at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            self._load()
            return True

    def _fresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at > MAX_AGE_S:
                self._load()

    def _load(self) -> None:
        by_key: dict[tuple[ForgeKind, str], Credential] = {}
        by_secret: dict[ForgeKind, dict[str, list[Credential]]] = {kind: {} for kind in ForgeKind}
        with Session(self.engine) as session:
            projects = session.exec(select(Project)).all()
        for project in projects:
            assert project.id is not None
            secret = self.box.open(project.webhook_secret)
            if not secret:  # an empty secret would accept deliveries carrying no token at all
                log.warning(
                    "%s project %s has no readable webhook secret (empty, plain text or another key's): its "
                    "deliveries are refused; run `reviewbot db upgrade` or `reviewbot project rotate-secret`",
                    project.forge, project.path,
                )  # fmt: skip
                continue
            credential = Credential(project.id, project.path, secret)
            kind = ForgeKind(project.forge)
            if project.webhook_key:
                by_key[(kind, project.webhook_key)] = credential
            by_secret[kind].setdefault(secret, []).append(credential)
        self._by_key, self._by_secret, self._loaded_at = by_key, by_secret, time.monotonic()


def handle_delivery(
    engine: sa.Engine,
    jobs: Jobs,
    secrets: ProjectSecrets,
    webhook: WebhookFormat,
    headers: Mapping[str, str],
    body: bytes,
    key: str | None = None,
) -> JSONResponse:
    """Everything after the size check; runs in a worker thread (database calls block)."""
    try:
        project_id, event = _authenticated(secrets, webhook, headers, body, key)
        with Session(engine) as session:
            project = session.get(Project, project_id)
            if project is None:  # removed since the secrets were read
                raise _Refused(404, f"project {event.project_path!r} is not registered here")
            delivery = _record_delivery(session, webhook, headers, body)
            return _dispatch(session, jobs, project, delivery, event)
    except _Refused as refused:
        return _answer(refused.status, refused.detail)


def _authenticated(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> tuple[int, WebhookEvent]:
    """The project that signed ``body`` and its event; a miss is tried once more with the secrets read
    again (a project just added, a secret just rotated)."""
    if not headers.get(webhook.credential_header):
        raise _Refused(
            401, f"no {webhook.credential_header} header: deliveries must carry the webhook secret"
        )
    try:
        return _project_of(secrets, webhook, headers, body, key)
    except _Refused as refused:
        if refused.status not in (401, 404) or not secrets.reload_on_miss():
            raise
    return _project_of(secrets, webhook, headers, body, key)


def _project_of(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> tuple[int, WebhookEvent]:
    matched = _matching(secrets, webhook, headers, body, key)
    event = webhook.parse(headers, _json_object(body))
    for credential in matched:
        if credential.path == event.project_path:
            return credential.project_id, event
    # A delivery for a project we don't serve (or not under this secret or URL): not recorded.
    raise _Refused(404, f"project {event.project_path!r} is not registered with this secret")


def _matching(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> list[Credential]:
    """The projects whose secret signed ``body``: the key's project, or every project of the forge
    sharing the matching secret (each distinct secret is checked once)."""
    if key is not None:
        credential = secrets.by_key(webhook.kind, key)
        if credential is None:
            raise _Refused(404, f"no {webhook.kind} project has this webhook URL")
        if not webhook.secret_matches(headers, body, credential.secret):
            raise _Refused(401, "signature or token does not match the project's webhook secret")
        return [credential]
    by_secret = secrets.by_secret(webhook.kind)
    if not by_secret:
        raise _Refused(404, f"no {webhook.kind} project is registered here")
    for secret, credentials in by_secret.items():
        if webhook.secret_matches(headers, body, secret):
            return credentials
    raise _Refused(401, "signature or token does not match any project's webhook secret")


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
        jobs.enqueue_roles(project_id)  # its author's role, read from the forge: until then it labels nothing
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
    body = bytearray()  # appended in place: ``bytes +=`` copies the whole body at every part
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def webhook_router(engine: sa.Engine, jobs: Jobs, box: SecretBox, concurrency: int) -> APIRouter:
    """``POST /webhooks/gitlab`` and ``/webhooks/github`` (shared by the forge's projects), and
    ``/webhooks/gitlab/KEY``, ``/webhooks/github/KEY`` (one project's own); at most ``concurrency``
    deliveries are handled at once, the rest answered 503 with ``Retry-After``."""
    routes = APIRouter()
    secrets = ProjectSecrets(engine, box)
    in_flight = 0  # the event loop is one thread: no lock needed

    async def receive(request: Request, webhook: WebhookFormat, key: str | None = None) -> JSONResponse:
        nonlocal in_flight
        if in_flight >= concurrency:
            response = _answer(503, "too many deliveries at once; try again shortly")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            metrics.DELIVERIES.labels(webhook.kind.value, _OUTCOMES[503]).inc()
            return response
        in_flight += 1
        try:
            response = await _receive(request, webhook, key)
        finally:
            in_flight -= 1
        metrics.DELIVERIES.labels(webhook.kind.value, _OUTCOMES.get(response.status_code, "other")).inc()
        return response

    async def _receive(request: Request, webhook: WebhookFormat, key: str | None) -> JSONResponse:
        with metrics.ACK_SECONDS.labels(webhook.kind.value).time():
            body = await _read_body(request)
            if body is None:
                return _answer(413, f"payload larger than {MAX_BODY_BYTES} bytes")
            headers = {k.lower(): v for k, v in request.headers.items()}
            return await run_in_threadpool(
                handle_delivery, engine, jobs, secrets, webhook, headers, body, key
            )

    for kind in ForgeKind:
        _routes_of(routes, receive, WEBHOOK_FORMATS[kind])
    return routes


def _routes_of(routes: APIRouter, receive: Any, webhook: WebhookFormat) -> None:
    @routes.post(f"/webhooks/{webhook.kind.value}", status_code=202, name=f"{webhook.kind.value}_webhook")
    async def shared(request: Request) -> JSONResponse:
        return await receive(request, webhook)  # type: ignore[no-any-return]

    @routes.post(f"/webhooks/{webhook.kind.value}/{{project_key}}", status_code=202)
    async def own(request: Request, project_key: str) -> JSONResponse:
        return await receive(request, webhook, project_key)  # type: ignore[no-any-return]
