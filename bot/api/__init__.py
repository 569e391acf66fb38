"""The HTTP service (FastAPI): webhook intake (``webhooks``), ``/healthz``, ``/metrics`` and the schema.

The API never does slow work in a request: it verifies, records and stages jobs in the outbox. It
wakes the queue's relay through the ``Jobs`` protocol and never imports the review pipeline. Only
the webhooks and ``/healthz`` are public: ``/metrics`` (unless ``REVIEWBOT_PUBLIC_METRICS``) and
``/openapi.json`` need ``Authorization: Bearer REVIEWBOT_ADMIN_TOKEN`` and are refused when no token
is set; the interactive ``/docs`` and ``/redoc`` pages are off.
"""

from __future__ import annotations

import hmac
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import REGISTRY

from bot import __version__
from bot.api.webhooks import Jobs, WebhookIntake
from bot.config import Settings, load_settings
from bot.feedback.stats import FeedbackCollector
from bot.secrets import secret_box


def create_app(engine: sa.Engine, jobs: Jobs, settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` (default: read from the environment) give the secret key, the admin
    token and the intake's limits."""
    settings = settings or load_settings()
    app = FastAPI(title="reviewbot", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    box, concurrency = secret_box(settings), settings.intake_concurrency
    app.add_middleware(WebhookIntake, engine=engine, jobs=jobs, box=box, concurrency=concurrency)
    admin = Depends(_admin_only(settings))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        with engine.connect() as connection:  # a broken database makes this a 500
            connection.execute(sa.text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    feedback = CollectorRegistry()  # per app, so each app (and test) reads its own database
    feedback.register(FeedbackCollector(engine))

    @app.get("/metrics", dependencies=[] if settings.public_metrics else [admin])
    def exposition() -> Response:
        body = generate_latest(REGISTRY) + generate_latest(feedback)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=[admin], include_in_schema=False)
    def schema() -> dict[str, Any]:
        return app.openapi()

    return app


def _admin_only(settings: Settings) -> Any:
    """A dependency that lets only ``Authorization: Bearer ADMIN_TOKEN`` through (constant-time)."""
    value = settings.admin_token.get_secret_value() if settings.admin_token else ""
    token = value.encode() if value else None  # an empty token would let an empty header in

    def check(request: Request) -> None:
        if token is None:
            raise HTTPException(
                403, "set REVIEWBOT_ADMIN_TOKEN to reach this (and send it as a bearer token)"
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
            raise HTTPException(401, "needs Authorization: Bearer REVIEWBOT_ADMIN_TOKEN")

    return check
