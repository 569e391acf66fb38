"""``reviewbot serve`` and ``reviewbot worker``: the long-running processes. What they print never
holds a credential: URLs are shown with their password hidden.

Both run the outbox relay (``bot.queue.relay``); whichever consumes the queue (``worker``, or
``serve`` with the SQLite queue) also runs the periodic jobs' scheduler (``bot.queue.schedule``: each
job once per period across all of them). On SIGTERM a consumer stops taking jobs, lets the running
ones finish for up to ``--shutdown-timeout`` seconds, and hands the rest back to the queue."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer
from sqlmodel import Session, col, select

from bot.cli.common import err, fail, open_engine
from bot.config import ConfigError, Settings, redact_url
from bot.forges import DEFAULT_TOKEN_ENV
from bot.models import ForgeKind, Project

if TYPE_CHECKING:
    import sqlalchemy as sa

    from bot.queue import Queue

ShutdownTimeout = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        help="On SIGTERM, how long running jobs may take to finish before they are handed back.",
    ),
]


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Listen port.")] = 8080,
    workers: Annotated[
        int, typer.Option(metavar="N", help="Embedded job consumer threads (SQLite queue only).")
    ] = 2,
    shutdown_timeout: ShutdownTimeout = 20.0,
    access_log: Annotated[
        bool,
        typer.Option(help="Log every HTTP request (off: at a webhook burst it costs more than the work)."),
    ] = False,
) -> None:
    """Run the API (webhooks, health, metrics); with the default SQLite queue, also the job consumer.

    Example: [bold]reviewbot serve --host 0.0.0.0 --port 8080[/bold]
    """
    import uvicorn

    from bot.api import create_app
    from bot.console import mount_console
    from bot.secrets import secret_box

    settings, engine = open_engine(ctx)
    warn_missing_tokens(engine)
    queue = _queue(settings, engine)
    # The app first (the console's pages take a moment to load): a SIGTERM between the consumer's
    # start, whose handler only flags it, and uvicorn's own handlers would be lost.
    app = create_app(engine, queue, settings)
    mount_console(app, engine, settings, secret_box(settings))
    consumer, scheduler = None, None
    if settings.queue_url.startswith("sqlite"):
        consumer = queue.huey.create_consumer(
            workers=workers, worker_type="thread", periodic=False, shutdown_timeout=shutdown_timeout
        )
        consumer.start()  # threads; uvicorn keeps the main thread and its signal handling
        scheduler = queue.scheduler()
        scheduler.start()
    else:
        where = redact_url(settings.queue_url)
        err.print(f"queue at {where}: run `reviewbot worker` to process jobs", highlight=False, markup=False)
    queue.wake()  # what an earlier run left in the outbox goes now
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=access_log,
        )  # with uvloop and httptools (dependencies): about 20% less CPU a delivery than plain asyncio
    finally:
        if scheduler is not None:
            scheduler.stop()
        if consumer is not None:
            consumer.stop(graceful=True)  # waits for the running jobs, up to the shutdown timeout
            queue.huey.notify_interrupted_tasks()  # those still running are handed back
        queue.relay.stop()


log = logging.getLogger("reviewbot")


def warn_missing_tokens(engine: sa.Engine) -> list[str]:
    """Log one line per enabled project whose token variable is not set in this process (its reviews
    would fail); the variables. An App's projects use installation tokens, which need none."""
    with Session(engine) as session:
        projects = session.exec(select(Project).where(col(Project.enabled))).all()
    missing = []
    for project in projects:
        variable = project.token_env or DEFAULT_TOKEN_ENV[ForgeKind(project.forge)]
        if project.installation_id is None and not os.environ.get(variable):
            log.warning(
                "%s project %s: no API token in $%s; its reviews fail until it is set in this service's "
                "environment", project.forge, project.path, variable,
            )  # fmt: skip
            missing.append(variable)
    return missing


def _queue(settings: Settings, engine: sa.Engine) -> Queue:
    """The queue, or one line saying which setting is missing (the secret key, most likely)."""
    from bot.queue import Queue

    try:
        return Queue(settings, engine)
    except ConfigError as exc:
        fail(str(exc))


def worker(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(metavar="N", help="Consumer threads.")] = 2,
    shutdown_timeout: ShutdownTimeout = 20.0,
) -> None:
    """Run job consumers (reviews, feedback, periodic polls and sweeps) against the configured queue.

    Example: [bold]REVIEWBOT_QUEUE_URL=redis://queue:6379/0 reviewbot worker --workers 4[/bold]
    """
    settings, engine = open_engine(ctx)
    warn_missing_tokens(engine)
    queue = _queue(settings, engine)
    consumer = queue.huey.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=False,  # the scheduler below runs them, once per period across all workers
        graceful_signal="TERM",  # SIGTERM: finish (up to the timeout) or hand back; SIGINT: hand back now
        shutdown_timeout=shutdown_timeout,
    )
    scheduler = queue.scheduler()
    scheduler.start()
    queue.wake()
    try:
        consumer.run()  # on a stop, the jobs still running are handed back (Queue.on_interrupted)
    finally:
        scheduler.stop()
        queue.relay.stop()
