"""The job queue: Huey tasks for reviews, late feedback, acknowledgements and roles (``tasks``),
jobs as signed JSON (``codec``), named leases with a heartbeat (``lease``: the per-merge-request review
lock, the periodic jobs' claims), the outbox relay (``relay``) and the periodic jobs run once per
period across all workers (``schedule``). ``reviewbot worker`` consumes it; ``reviewbot serve``
embeds a consumer when the queue is the default SQLite file."""

from bot.queue.tasks import FindingNotYet, Queue, make_huey

__all__ = ["FindingNotYet", "Queue", "make_huey"]
