"""The FastAPI application: webhooks, health and metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import REGISTRY

from bot import __version__, metrics, webhooks


def create_app(engine: sa.Engine, jobs: webhooks.Jobs) -> FastAPI:
    app = FastAPI(title="reviewbot", version=__version__)
    app.include_router(webhooks.router(engine, jobs))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        with engine.connect() as connection:  # a broken database makes this a 500
            connection.execute(sa.text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    feedback = CollectorRegistry()  # per app, so each app (and test) reads its own database
    feedback.register(metrics.FeedbackCollector(engine))

    @app.get("/metrics")
    def exposition() -> Response:
        body = generate_latest(REGISTRY) + generate_latest(feedback)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
