"""The job outbox: a job is a row written in the same transaction as what caused it (a delivery, a
review), so a queue that is down loses nothing; ``bot.queue.relay`` moves unsent rows to the queue and
stamps them sent. A job may reach the queue twice (a crash between sending and stamping): every task
is idempotent."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from bot.events import Signal, SignalKind
from bot.models import Outbox


class Job(StrEnum):
    REVIEW = "review"  # (review_id,)
    FEEDBACK = "feedback"  # (project_id, delivery_id, signal)
    ACKNOWLEDGE = "acknowledge"  # (finding_id, signal)
    ROLES = "roles"  # (project_id,)
    GATE = "gate"  # (project_id, mr_number): the merge request's commit status, from its latest review
    POST = "post"  # (review_id,): post the review's findings an admin unsuppressed


def _encode(arg: int | Signal) -> Any:
    return {"signal": dataclasses.asdict(arg)} if isinstance(arg, Signal) else arg


def _decode(arg: Any) -> int | Signal:
    if isinstance(arg, dict):
        fields = arg["signal"]
        return Signal(**{**fields, "kind": SignalKind(fields["kind"])})
    return int(arg)


def stage(session: Session, job: Job, *args: int | Signal) -> Outbox:
    """Add ``job`` to the outbox in ``session``; it exists once the caller commits."""
    row = Outbox(task=job.value, args=[_encode(arg) for arg in args])
    session.add(row)
    return row


def job_of(row: Outbox) -> tuple[Job, tuple[int | Signal, ...]]:
    """The job a row holds and its arguments, as ``stage`` was given them."""
    return Job(row.task), tuple(_decode(arg) for arg in row.args)
