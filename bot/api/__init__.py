"""The HTTP service (FastAPI): webhook intake (``webhooks``), ``/healthz`` and ``/metrics``.

The API never does slow work in a request: it verifies, records and enqueues. It hands work to the
queue through the ``Jobs`` protocol and never imports the review pipeline.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import REGISTRY

from bot import __version__
from bot.api.webhooks import Jobs, webhook_router
from bot.feedback.stats import FeedbackCollector


def create_app(engine: sa.Engine, jobs: Jobs) -> FastAPI:
    app = FastAPI(title="reviewbot", version=__version__)
    app.include_router(webhook_router(engine, jobs))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        with engine.connect() as connection:  # a broken database makes this a 500
            connection.execute(sa.text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    feedback = CollectorRegistry()  # per app, so each app (and test) reads its own database
    feedback.register(FeedbackCollector(engine))

    @app.get("/metrics")
    def exposition() -> Response:
        body = generate_latest(REGISTRY) + generate_latest(feedback)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
