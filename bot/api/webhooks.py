"""Webhook intake: verify, record, decide, stage jobs, answer — never waiting on a forge or a model.

The steps, in order (DESIGN.md §6): too many deliveries in flight (503, ``Retry-After``) → size limit
(413) → the credential, checked against secrets held in memory (``ProjectSecrets``), constant-time,
before any database query (401, nothing stored) → JSON (400) → the project: on a project's own URL
(``/webhooks/FORGE/KEY``) the one that key names; on a forge's shared URL, among the projects whose
secret matches, the one the payload names, so projects sharing one secret (GitHub Apps, organisation
and group hooks) all work (404 when none) → delivery dedupe (a repeat answers 200 and does nothing) →
dispatch: record a close, ignore (with the reason), record feedback, or queue a review.

A source's key (a GitLab group, a GitHub App: ``bot.sources``) names many projects under one secret:
a project of the group, or a repository the App is on, that is not registered yet is added by the
delivery that names it; an App's installation events add and disable its repositories.

What a delivery causes is written in its own transaction: its jobs are outbox rows (``bot.outbox``)
that the relay sends to the queue after the commit (``Jobs.wake``), so a queue that is down loses no
job, and a delivery answered is a delivery recorded. The checks up to the project need no database:
a small body is verified on the event loop. The writes go to one thread that commits the deliveries
arriving together in one transaction (``bot.api.group_commit``) and answers each after its commit.
Everything forge-specific is in ``bot.forges.WEBHOOK_FORMATS``; this module never looks inside a payload.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Receive, Scope, Send

from bot import metrics
from bot.api.group_commit import GroupCommit
from bot.events import Signal, WebhookEvent
from bot.feedback.signals import apply_signal, quoted_findings, stage_follow_ups
from bot.forges import WEBHOOK_FORMATS, WebhookFormat
from bot.models import Delivery, ForgeKind, Project, Review, ReviewStatus, Source, SourceKind, utcnow
from bot.outbox import Job, stage
from bot.secrets import SecretBox
from bot.sources import add_project, apply_installation, claims

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
INLINE_BODY_BYTES = 256 * 1024  # a body up to this is verified on the event loop; larger, in a thread
_DELIVERY: sa.Table = Delivery.__table__  # type: ignore[attr-defined]
_REVIEW: sa.Table = Review.__table__  # type: ignore[attr-defined]
_PROJECTS: sa.Table = Project.__table__  # type: ignore[attr-defined]
_ProjectRow = sa.Row[Any, Any, Any]  # id, enabled, bot_username


class Jobs(Protocol):
    """What the intake hands work to: jobs are outbox rows written with the delivery
    (``bot.outbox.stage``); ``wake`` says, after the commit, that there are rows to send."""

    def wake(self) -> None: ...


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


@dataclass(frozen=True)
class SourceCredential:
    """A group's or an App's webhook: its secret, and the projects it has added so far."""

    source_id: int
    kind: SourceKind
    name: str
    secret: str
    projects: list[Credential] = field(default_factory=list)


@dataclass
class Signers:
    """Who signs with one secret: projects, and the sources they may belong to."""

    projects: list[Credential] = field(default_factory=list)
    sources: list[SourceCredential] = field(default_factory=list)


class ProjectSecrets:
    """The webhook secrets of every project, opened once and held in memory, so a delivery is
    authenticated before any database query: by webhook key, and by forge and secret (several
    projects may share one). Read on first use, again when older than ``MAX_AGE_S``, and on a miss
    (an unknown key, a secret or project not known yet), with misses' reloads rate-limited by a token
    bucket so unauthenticated traffic costs at most about one query a second."""

    def __init__(self, engine: sa.Engine, box: SecretBox) -> None:
        self.engine, self.box = engine, box
        self._lock = threading.Lock()
        self._by_key: dict[tuple[ForgeKind, str], Credential | SourceCredential] = {}
        self._by_secret: dict[ForgeKind, dict[str, Signers]] = {}
        self._loaded_at = -MAX_AGE_S
        self._tokens, self._tokens_at = float(REFRESHES_BURST), time.monotonic()

    def by_key(self, kind: ForgeKind, key: str) -> Credential | SourceCredential | None:
        self._fresh()
        return self._by_key.get((kind, key))

    def by_secret(self, kind: ForgeKind) -> dict[str, Signers]:
        self._fresh()
        return self._by_secret.get(kind, {})

    def fresh(self) -> bool:
        """Whether the secrets in memory are recent enough to use without reading them again."""
        return time.monotonic() - self._loaded_at <= MAX_AGE_S

    def expire(self) -> None:
        """Projects were added or changed: read the secrets again before the next delivery."""
        self._loaded_at = -MAX_AGE_S

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
        if self.fresh():  # no lock: the event loop must not wait on a reload in a worker thread
            return
        with self._lock:
            if not self.fresh():
                self._load()

    def _load(self) -> None:
        by_key: dict[tuple[ForgeKind, str], Credential | SourceCredential] = {}
        by_secret: dict[ForgeKind, dict[str, Signers]] = {kind: {} for kind in ForgeKind}
        with Session(self.engine) as session:
            projects = session.exec(select(Project)).all()
            sources = session.exec(select(Source).where(col(Source.enabled))).all()
        by_source: dict[int, SourceCredential] = {}
        for source in sources:
            assert source.id is not None
            secret = self._open(source.webhook_secret, f"{source.forge} {source.kind} {source.name}")
            if secret is None:
                continue
            signer = SourceCredential(source.id, SourceKind(source.kind), source.name, secret)
            by_source[source.id] = signer
            by_key[(ForgeKind(source.forge), source.webhook_key)] = signer
            by_secret[ForgeKind(source.forge)].setdefault(secret, Signers()).sources.append(signer)
        for project in projects:
            assert project.id is not None
            kind = ForgeKind(project.forge)
            if project.source_id is not None:  # signed with its source's secret, at its source's URL
                source_credential = by_source.get(project.source_id)
                if source_credential is None:  # the source is disabled or unreadable: so is it
                    continue
                credential = Credential(project.id, project.path, source_credential.secret)
                source_credential.projects.append(credential)
            else:
                secret = self._open(project.webhook_secret, f"{project.forge} project {project.path}")
                if secret is None:
                    continue
                credential = Credential(project.id, project.path, secret)
                if project.webhook_key:
                    by_key[(kind, project.webhook_key)] = credential
            by_secret[kind].setdefault(credential.secret, Signers()).projects.append(credential)
        self._by_key, self._by_secret, self._loaded_at = by_key, by_secret, time.monotonic()

    def _open(self, sealed: str, what: str) -> str | None:
        secret = self.box.open(sealed)
        if not secret:  # an empty secret would accept deliveries carrying no token at all
            log.warning(
                "%r has no readable webhook secret (empty, plain text or another key's): its deliveries "
                "are refused; run `reviewbot db upgrade` or `reviewbot project rotate-secret`",
                what,
            )
            return None
        return secret


@dataclass(frozen=True)
class Verified:
    """A delivery whose credential matched a project, parsed: ready to be recorded. With no project,
    ``source`` signed it: an App's installation event, or a project of the source not added yet."""

    kind: ForgeKind
    delivery_id: str
    project_id: int | None
    event: WebhookEvent
    source: SourceCredential | None = None


@dataclass(frozen=True)
class Recorded:
    """The answer to a delivery, whether its transaction staged jobs (the queue is woken), and
    whether it added or changed projects (the secrets in memory are read again)."""

    answer: JSONResponse
    staged: bool = False
    projects_changed: bool = False


def verify(
    secrets: ProjectSecrets,
    webhook: WebhookFormat,
    headers: Mapping[str, str],
    body: bytes,
    key: str | None,
    reload: bool = True,
) -> Verified:
    """The delivery's project and event, or ``_Refused``; a miss is tried once more with the secrets
    read again (a project just added, a secret just rotated) unless ``reload`` is False."""
    if not headers.get(webhook.credential_header):
        raise _Refused(
            401, f"no {webhook.credential_header} header: deliveries must carry the webhook secret"
        )
    try:
        project_id, source, event = _project_of(secrets, webhook, headers, body, key)
    except _Refused as refused:
        if refused.status not in (401, 404) or not reload or not secrets.reload_on_miss():
            raise
        project_id, source, event = _project_of(secrets, webhook, headers, body, key)
    return Verified(webhook.kind, webhook.delivery_id(headers, body), project_id, event, source)


def _project_of(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> tuple[int | None, SourceCredential | None, WebhookEvent]:
    signers = _matching(secrets, webhook, headers, body, key)
    event = webhook.parse(headers, _json_object(body))
    for credential in signers.projects:
        if credential.path == event.project_path:
            return credential.project_id, None, event
    for source in signers.sources:
        if _serves(source, event):
            return None, source, event
    # A delivery for a project we don't serve (or not under this secret or URL): not recorded.
    raise _Refused(404, f"project {event.project_path!r} is not registered with this secret")


def _serves(source: SourceCredential, event: WebhookEvent) -> bool:
    """Whether ``source`` answers for an event none of its known projects claimed: an App's
    installation event, or a project it may add (an App's needs the installation that sent it)."""
    if event.installation is not None:
        return source.kind is SourceKind.GITHUB_APP
    if source.kind is SourceKind.GITHUB_APP and event.installation_id is None:
        return False  # an App's deliveries name their installation: its project's tokens need it
    return claims(source.kind, source.name, event.project_path)


def _matching(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> Signers:
    """Who signed ``body``: the key's project or source (with its projects), or every project and
    source of the forge sharing the matching secret (each distinct secret is checked once)."""
    if key is not None:
        credential = secrets.by_key(webhook.kind, key)
        if credential is None:
            raise _Refused(404, f"no {webhook.kind} project has this webhook URL")
        if not webhook.secret_matches(headers, body, credential.secret):
            raise _Refused(401, "signature or token does not match the project's webhook secret")
        if isinstance(credential, SourceCredential):
            return Signers(credential.projects, [credential])
        return Signers([credential])
    by_secret = secrets.by_secret(webhook.kind)
    if not by_secret:
        raise _Refused(404, f"no {webhook.kind} project is registered here")
    for secret, signers in by_secret.items():
        if webhook.secret_matches(headers, body, secret):
            return signers
    raise _Refused(401, "signature or token does not match any project's webhook secret")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)  # a JSONDecodeError is a ValueError
    except ValueError as exc:
        raise _Refused(400, f"malformed JSON payload: {exc}") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "malformed JSON payload: the payload is not a JSON object")
    return payload


def record(session: Session, verified: Verified) -> Recorded:
    """Record the delivery and act on it in ``session``'s transaction (the caller commits): a repeat
    does nothing; jobs are staged in the outbox. Runs in the intake's writer thread, several
    deliveries to a transaction, so it never raises for one delivery's sake (a refusal is an answer)."""
    if verified.project_id is None:
        return _from_source(session, verified)
    project = _project(session, verified.project_id)
    event = verified.event
    if project is None:  # removed since the secrets were read
        return Recorded(_answer(404, f"project {event.project_path!r} is not registered here"))
    ignored = _why_ignored(project, event)
    closed = f"recorded: merge request {event.number} merged or closed" if event.closed else None
    delivery_id = _insert_delivery(session, verified, f"ignored: {ignored}" if ignored else closed or "")
    if delivery_id is None:
        return Recorded(_answer(200, "duplicate delivery, already handled"))
    if event.closed is not None and event.number is not None:  # a fact, whoever caused it
        _mark_closed(session, project.id, event.number, event.closed)
    if ignored is not None:
        log.debug("%s delivery %s ignored: %s", verified.kind, verified.delivery_id, ignored)
        return Recorded(_answer(200, f"ignored: {ignored}"))
    if event.signal is not None:
        return _feedback(session, project.id, delivery_id, event.signal)
    if closed is not None:
        return Recorded(_answer(200, f"{closed}; feedback polling ends a few days from now"))
    return _queue_review(session, project.id, delivery_id, event)


def _from_source(session: Session, verified: Verified) -> Recorded:
    """A delivery its source signed that none of the source's known projects claimed: an App's
    installation event, or the first delivery of a project the source serves (added, then recorded
    as any other; an event that asks for nothing adds no project)."""
    assert verified.source is not None
    event = verified.event
    source = session.get(Source, verified.source.source_id)
    if source is None or not source.enabled:  # removed or disabled since the secrets were read
        return Recorded(_answer(404, "this webhook's group or App is not registered here any more"))
    if event.installation is None and event.ignored is None:
        project = add_project(session, source, event.project_path, event.installation_id)
        if project is None:
            why = "is registered on its own: deliveries go to its own webhook URL"
            return Recorded(_answer(404, f"project {event.project_path!r} {why}"))
        assert project.id is not None
        recorded = record(session, replace(verified, project_id=project.id, source=None))
        return replace(recorded, projects_changed=True)
    outcome = f"ignored: {event.ignored}" if event.ignored is not None else ""
    delivery_id = _insert_delivery(session, verified, outcome)
    if delivery_id is None:
        return Recorded(_answer(200, "duplicate delivery, already handled"))
    if event.installation is None:  # of a project not added yet, asking for nothing: none is added
        return Recorded(_answer(200, outcome))
    changes = apply_installation(session, source, event.installation)
    session.info.pop("intake projects", None)  # rows read earlier in this transaction may be stale
    detail = f"installation {event.installation.installation_id}: {changes.describe()}"
    _set_outcome(session, delivery_id, detail)
    return Recorded(_answer(200, detail, **vars(changes)), projects_changed=True)


def _project(session: Session, project_id: int) -> _ProjectRow | None:
    """What the intake needs of a project (read once per transaction, however many of its
    deliveries the transaction holds); None when it was removed."""
    projects: dict[int, _ProjectRow | None] = session.info.setdefault("intake projects", {})
    if project_id not in projects:
        projects[project_id] = session.connection().execute(_PROJECT, {"project": project_id}).first()
    return projects[project_id]


# The intake's own statements, built once with bound parameters: building and compiling them per
# delivery cost more than running them. ON CONFLICT DO NOTHING makes a repeat a row not returned,
# not an error that would end a transaction other deliveries share.
_INSERT_DELIVERY = {
    dialect: insert(_DELIVERY)
    .values({name: sa.bindparam(name) for name in ("forge", "delivery_id", "received_at", "outcome")})
    .on_conflict_do_nothing(index_elements=["forge", "delivery_id"])
    .returning(_DELIVERY.c.id)
    for dialect, insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}
_PROJECT = sa.select(_PROJECTS.c.id, _PROJECTS.c.enabled, _PROJECTS.c.bot_username).where(
    _PROJECTS.c.id == sa.bindparam("project")
)
_SET_OUTCOME = (
    sa.update(_DELIVERY)
    .where(_DELIVERY.c.id == sa.bindparam("delivery"))
    .values(outcome=sa.bindparam("new_outcome"))
)
_INSERT_REVIEW = sa.insert(_REVIEW).returning(_REVIEW.c.id)


def _insert_delivery(session: Session, verified: Verified, outcome: str) -> int | None:
    """The new delivery's id; None when it was seen before."""
    connection = session.connection()
    values = {
        "forge": verified.kind.value,
        "delivery_id": verified.delivery_id,
        "received_at": utcnow(),
        "outcome": outcome,
    }
    new_id: int | None = connection.execute(
        _INSERT_DELIVERY[connection.dialect.name], values
    ).scalar_one_or_none()
    return new_id


def _set_outcome(session: Session, delivery_id: int, outcome: str) -> None:
    session.connection().execute(_SET_OUTCOME, {"delivery": delivery_id, "new_outcome": outcome})


def _why_ignored(project: _ProjectRow, event: WebhookEvent) -> str | None:
    if event.ignored is not None:
        return event.ignored
    if not project.enabled:
        return "project is disabled"
    if project.bot_username and event.actor == project.bot_username:
        return "event caused by the bot itself"
    return None


def _queue_review(session: Session, project_id: int, delivery_id: int, event: WebhookEvent) -> Recorded:
    assert event.number is not None
    assert event.head_sha is not None
    review = Review(project_id=project_id, mr_number=event.number, head_sha=event.head_sha)
    values = review.model_dump(exclude={"id"})  # the model's defaults
    review_id: int = session.connection().execute(_INSERT_REVIEW, values).scalar_one()
    stage(session, Job.REVIEW, review_id)  # sent once this transaction commits
    _set_outcome(session, delivery_id, f"review {review_id} queued")
    return Recorded(
        _answer(202, "review queued", review_id=review_id, review_status=ReviewStatus.QUEUED.value),
        staged=True,
    )


def _mark_closed(session: Session, project_id: int, number: int, closed: bool) -> None:
    """Stamp (or clear, on reopening) the close time on every review of that merge request."""
    session.execute(
        sa.update(Review)
        .where(col(Review.project_id) == project_id, col(Review.mr_number) == number)
        .values(mr_closed_at=utcnow() if closed else None)
    )


def _feedback(session: Session, project_id: int, delivery_id: int, signal: Signal) -> Recorded:
    applied = apply_signal(session, project_id, signal)
    if applied is not None:
        finding, changed = applied
        _set_outcome(session, delivery_id, f"recorded {signal.kind}")
        stage_follow_ups(session, project_id, finding, signal, changed)
        return Recorded(_answer(200, f"feedback recorded: {signal.describe()}"), staged=True)
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
            _set_outcome(session, delivery_id, f"ignored: pull request comment {why}")
            return Recorded(_answer(200, f"ignored: pull request comment {why}: {signal.describe()}"))
    # Its finding may not be recorded yet (the review job is still posting): the queue tries again.
    _set_outcome(session, delivery_id, "feedback waiting for its finding")
    stage(session, Job.FEEDBACK, project_id, delivery_id, signal)
    return Recorded(
        _answer(202, f"feedback queued until its finding is known: {signal.describe()}"), staged=True
    )


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


class WebhookIntake:
    """``POST /webhooks/gitlab`` and ``/webhooks/github`` (shared by the forge's projects), and
    ``/webhooks/gitlab/KEY``, ``/webhooks/github/KEY`` (one project's own), as a plain ASGI layer in
    front of ``app`` (which gets every other request): FastAPI's routing, dependency and exception
    layers cost more per delivery than the intake's own work. At most ``concurrency`` deliveries are
    handled at once, the rest answered 503 with ``Retry-After``."""

    def __init__(self, app: ASGIApp, engine: sa.Engine, jobs: Jobs, box: SecretBox, concurrency: int) -> None:
        self.app, self.concurrency = app, concurrency
        self.secrets = ProjectSecrets(engine, box)
        self.writer = GroupCommit(engine, record, lambda batch: _after_commit(jobs, self.secrets, batch))
        self.in_flight = 0  # the event loop is one thread: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTE.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            response = _answer(405, "Method Not Allowed")
            response.headers["Allow"] = "POST"
        else:
            webhook = WEBHOOK_FORMATS[ForgeKind(route["forge"])]
            response = await self.handle(Request(scope, receive), webhook, route["key"])
        await response(scope, receive, send)

    async def handle(self, request: Request, webhook: WebhookFormat, key: str | None) -> JSONResponse:
        if self.in_flight >= self.concurrency:
            response = _answer(503, "too many deliveries at once; try again shortly")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            metrics.DELIVERIES.labels(webhook.kind.value, _OUTCOMES[503]).inc()
            return response
        self.in_flight += 1
        try:
            with metrics.ACK_SECONDS.labels(webhook.kind.value).time():
                response = await self._handle(request, webhook, key)
        finally:
            self.in_flight -= 1
        metrics.DELIVERIES.labels(webhook.kind.value, _OUTCOMES.get(response.status_code, "other")).inc()
        return response

    async def _handle(self, request: Request, webhook: WebhookFormat, key: str | None) -> JSONResponse:
        body = await _read_body(request)
        if body is None:
            return _answer(413, f"payload larger than {MAX_BODY_BYTES} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            verified = await _verified(self.secrets, webhook, headers, body, key)
        except _Refused as refused:
            return _answer(refused.status, refused.detail)
        return (await self.writer.submit(verified)).answer


_ROUTE = re.compile(rf"/webhooks/(?P<forge>{'|'.join(kind.value for kind in ForgeKind)})(?:/(?P<key>[^/]+))?")


async def _verified(
    secrets: ProjectSecrets, webhook: WebhookFormat, headers: Mapping[str, str], body: bytes, key: str | None
) -> Verified:
    """``verify`` on the event loop when that is CPU work only (a small body, the secrets fresh, no
    miss to read them again for), saving the hop to a thread; else in a worker thread, where a large
    body's JSON or a database read holds up no other request."""
    if len(body) <= INLINE_BODY_BYTES and secrets.fresh():
        try:
            return verify(secrets, webhook, headers, body, key, reload=False)
        except _Refused as refused:
            if refused.status not in (401, 404):
                raise
    return await run_in_threadpool(verify, secrets, webhook, headers, body, key)


def _after_commit(jobs: Jobs, secrets: ProjectSecrets, batch: Sequence[Recorded]) -> None:
    """After a commit that staged jobs: the relay sends them now rather than at its next sweep; one
    that added or changed projects: the next delivery reads the secrets again, knowing them."""
    if any(recorded.projects_changed for recorded in batch):
        secrets.expire()
    if any(recorded.staged for recorded in batch):
        jobs.wake()
