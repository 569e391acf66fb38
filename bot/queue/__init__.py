"""The job queue: Huey tasks for reviews, late feedback and acknowledgements, and the periodic
feedback poll and stale-job sweep (``tasks``). ``reviewbot worker`` consumes it; ``reviewbot serve``
embeds a consumer when the queue is the default SQLite file."""

from bot.queue.tasks import FindingNotYet, Queue, make_huey

__all__ = ["FindingNotYet", "Queue", "make_huey"]
