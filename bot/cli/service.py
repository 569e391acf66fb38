"""``reviewbot serve`` and ``reviewbot worker``: the long-running processes."""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli.common import err, open_engine


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
    from bot.queue import Queue

    settings, engine = open_engine(ctx)
    queue = Queue(settings, engine)
    consumer = None
    if settings.queue_url.startswith("sqlite"):
        consumer = queue.huey.create_consumer(workers=workers, worker_type="thread")
        consumer.start()  # threads; uvicorn keeps the main thread and its signal handling
    else:
        err.print(f"queue at {settings.queue_url}: run `reviewbot worker` to process jobs", highlight=False)
    try:
        uvicorn.run(create_app(engine, queue), host=host, port=port, log_level=settings.log_level.lower())
    finally:
        if consumer is not None:
            consumer.stop(graceful=True)


def worker(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(metavar="N", help="Consumer threads.")] = 2,
) -> None:
    """Run job consumers (reviews, feedback, periodic polls and sweeps) against the configured queue.

    Example: [bold]REVIEWBOT_QUEUE_URL=redis://queue:6379/0 reviewbot worker --workers 4[/bold]
    """
    from bot.queue import Queue

    settings, engine = open_engine(ctx)
    Queue(settings, engine).huey.create_consumer(workers=workers, worker_type="thread").run()
