"""A real ``reviewbot worker`` killed or stopped in the middle of a review: the review still completes,
once, with no comment posted twice, and no review is left stuck."""

from __future__ import annotations

import signal
import time

import pytest
from sqlmodel import Session

from bot.models import Lease, ReviewStatus
from bot.queue.lease import review_lease
from tests.faults.world import World, wall_time
from tests.support.processes import start_worker, wait_for

LEASE_TTL_S = 5  # the smallest the settings allow: a killed worker's review is taken over this soon
SETTLE_S = 90


def test_a_worker_killed_mid_review_is_taken_over_after_its_lease(world: World) -> None:
    """One ``kill -9`` lands on two reviews at once: one waiting on the model, one that has posted
    its findings and is posting its summary (the moment a careless retry posts them again)."""
    world.model.slow_files = {"thinking.py": 30.0}  # its first run never gets an answer
    world.forge_log.slow("POST", r"/merge_requests/2/notes$", 5.0)  # the summary, after the findings
    thinking = world.add_merge_request(path="thinking.py")
    posting = world.add_merge_request(path="posting.py")
    review_ids = [world.add_review(mr) for mr in (thinking, posting)]
    env = world.env(lease_ttl_s=str(LEASE_TTL_S))

    first = start_worker("worker-1", env, world.log_dir, workers=2)
    try:
        wait_for(
            "one review waiting on the model and the other posting its summary",
            lambda: (
                bool(world.model.find_calls("thinking.py"))
                and bool(world.forge_log.matching("POST", r"/merge_requests/2/notes$", answered=False))
            ),
            60,
        )
        first.kill()
        killed_at = time.time()
    finally:
        first.stop()
    world.model.slow_files = {}  # the model answers the second run at once
    leases = []
    for review_id in review_ids:
        killed = world.review(review_id)
        assert killed.status == ReviewStatus.RUNNING, first.output()[-3000:]
        assert killed.lease_until is not None
        leases.append(wall_time(killed.lease_until))
    posted_before = len([kind for kind, _ in world.bot_markers(posting) if kind == "finding"])
    assert posted_before == 2  # the findings were on the forge when the worker died

    second = start_worker("worker-2", env, world.log_dir)
    try:
        wait_for("every review to settle", world.settled, SETTLE_S)
    finally:
        second.stop()
    for review_id in review_ids:
        row = world.review(review_id)
        assert row.status == ReviewStatus.DONE, (row.error, second.output()[-3000:])
        assert row.attempts == 2
    retried = world.model.find_calls("thinking.py")[1:]
    assert retried, "the second worker never asked the model"
    assert retried[0] >= leases[0] - 0.5, "taken over before the lease expired"
    for mr in (thinking, posting):
        findings = [fp for kind, fp in world.bot_markers(mr) if kind == "finding"]
        assert len(findings) == 2  # the two changed handlers, posted once each

    name = (
        f"kill -9 a worker running 2 reviews (one waiting on the model, one posting); taken over "
        f"{retried[0] - killed_at:.0f} s after the kill (lease TTL {LEASE_TTL_S} s, sweep every 6 s)"
    )
    tally = world.tally(name, faults=1, reviewed=[thinking, posting])
    assert (tally.completed, tally.duplicates, tally.stuck, tally.lost) == (2, 0, 0, 0), tally


@pytest.mark.parametrize(("shutdown_timeout_s", "outcome"), [(30, "finishes it"), (1, "hands it back")])
def test_sigterm_mid_review_finishes_or_hands_the_job_back(
    world: World, shutdown_timeout_s: int, outcome: str
) -> None:
    world.model.find_delay_s = 4.0
    mr = world.add_merge_request()
    review_id = world.add_review(mr)
    env = world.env(lease_ttl_s=str(LEASE_TTL_S))

    first = start_worker("worker-1", env, world.log_dir, "--shutdown-timeout", str(shutdown_timeout_s))
    try:
        wait_for("the first worker to ask the model", lambda: bool(world.model.find_calls()), 60)
        first.send(signal.SIGTERM)
        asked_at = time.monotonic()
        code = first.wait(timeout_s=60)
        stopped_in = time.monotonic() - asked_at
    finally:
        first.stop()
    assert code == 0, first.output()[-3000:]
    after = world.review(review_id)
    if outcome == "finishes it":
        assert after.status == ReviewStatus.DONE, (after, first.output()[-3000:])
    else:  # back in the queue, its merge request's lease given back: the next worker need not wait
        assert after.status == ReviewStatus.QUEUED, (after, first.output()[-3000:])
        with Session(world.engine) as session:
            held = session.get(Lease, review_lease(world.project_id, mr.iid))
        assert held is None or wall_time(held.expires_at) <= time.time(), held
        assert stopped_in < shutdown_timeout_s + 5

    second = start_worker("worker-2", env, world.log_dir)
    try:
        wait_for("every review to settle", world.settled, SETTLE_S)
    finally:
        second.stop()
    row = world.review(review_id)
    assert row.status == ReviewStatus.DONE, (row.error, second.output()[-3000:])
    findings = [fp for kind, fp in world.bot_markers(mr) if kind == "finding"]
    assert len(findings) == 2

    name = f"SIGTERM a worker mid-review: it {outcome} (exited in {stopped_in:.1f} s)"
    tally = world.tally(name, faults=1, reviewed=[mr])
    assert (tally.completed, tally.duplicates, tally.stuck, tally.lost) == (1, 0, 0, 0), tally
