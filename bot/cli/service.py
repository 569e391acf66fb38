"""``reviewbot serve`` and ``reviewbot worker``: the long-running processes. What they print never
holds a credential: URLs are shown with their password hidden."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import err, fail, open_engine
from bot.config import ConfigError, Settings, redact_url

if TYPE_CHECKING:
    import sqlalchemy as sa

    from bot.queue import Queue


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Listen port.")] = 8080,
    workers: Annotated[
        int, typer.Option(metavar="N", help="Embedded job consumer threads (SQLite queue only).")
    ] = 2,
) -> None:
    """Run the API (webhooks, health, metrics); with the default SQLite queue, also the job consumer.

    Example: [bold]reviewbot serve --host 0.0.0.0 --port 8080[/bold]
    """
    import uvicorn

    from bot.api import create_app

    settings, engine = open_engine(ctx)
    queue = _queue(settings, engine)
    consumer = None
    if settings.queue_url.startswith("sqlite"):
        consumer = queue.huey.create_consumer(workers=workers, worker_type="thread")
        consumer.start()  # threads; uvicorn keeps the main thread and its signal handling
    else:
        where = redact_url(settings.queue_url)
        err.print(f"queue at {where}: run `reviewbot worker` to process jobs", highlight=False, markup=False)
    try:
        uvicorn.run(
            create_app(engine, queue, settings), host=host, port=port, log_level=settings.log_level.lower()
        )
    finally:
        if consumer is not None:
            consumer.stop(graceful=True)


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
) -> None:
    """Run job consumers (reviews, feedback, periodic polls and sweeps) against the configured queue.

    Example: [bold]REVIEWBOT_QUEUE_URL=redis://queue:6379/0 reviewbot worker --workers 4[/bold]
    """
    settings, engine = open_engine(ctx)
    _queue(settings, engine).huey.create_consumer(workers=workers, worker_type="thread").run()
