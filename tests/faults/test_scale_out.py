"""The scaled-out topology on one machine: one ``reviewbot serve`` (the API only, the queue on Redis),
three ``reviewbot worker`` processes, a PostgreSQL and a Redis of the test's own, and the real vLLM
server with the tiny student. Fifty merge requests arrive as signed webhooks through the fake
GitLab's project; every one is reviewed exactly once, the reviews are spread over the workers, and a
worker killed with SIGKILL in the middle of a review changes nothing in the totals: another worker
runs its review again once its lease has expired.

The tiny student, not the demo student: SmolLM2-135M takes about 50 s a review on this 2-core
machine (README), so fifty would take most of an hour; with the tiny one they take two to three
minutes."""

from __future__ import annotations

import time

import pytest

from bot.models import ReviewStatus
from tests.faults.fleet import Fleet, fleet
from tests.faults.world import TERMINAL, World, wall_time
from tests.support.processes import Reviewbot, wait_for
from tests.support.vllm_server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.postgres]

MERGE_REQUESTS = 50
WORKERS = 3
LEASE_TTL_S = 5  # the smallest the settings allow: the killed worker's review is taken over this soon
SETTLE_S = 480


def victim(scale: Fleet) -> Reviewbot | None:
    """Once a third of the reviews are done: a worker that has posted a review and is running one."""
    if len(scale.done()) < MERGE_REQUESTS // 3:
        return None
    posted = scale.summaries_by_worker()
    return next((w for w in scale.workers if posted[w.name] and scale.reviewing(w)), None)


@pytest.mark.parametrize("world", ["postgres-redis"], indirect=True)
def test_three_workers_review_fifty_merge_requests_once_each_with_one_killed(
    world: World, vllm_server: VLLMServer
) -> None:
    mrs = [world.add_merge_request(changed=(n % 30,)) for n in range(MERGE_REQUESTS)]
    settings = {
        "student_base_url": vllm_server.base_url,
        "student_model": "tiny-student",
        "lease_ttl_s": str(LEASE_TTL_S),
        "llm_max_retries": "3",  # the product's default: a loaded CPU server may drop a connection
    }
    with fleet(world, WORKERS, settings) as scale:
        assert scale.consumers() == {w.pid for w in scale.workers}  # the API consumes no job
        started = time.monotonic()
        statuses = scale.deliver(mrs)
        assert set(statuses.values()) == {202}, statuses

        chosen: list[Reviewbot] = []

        def midway() -> bool:
            if (worker := victim(scale)) is not None:
                chosen.append(worker)
            return bool(chosen)

        wait_for("a third of the reviews done and a worker in the middle of one", midway, SETTLE_S, 0.05)
        killed = chosen[0]
        killed.kill()
        killed_at = time.time()
        done_before = scale.done()
        # Its leases stay behind: the reviews it was running (less one it had just marked done).
        held = [number for number in scale.reviewing(killed) if number not in done_before]
        assert held, f"{killed.name} finished its review just before the kill"
        leases = {}
        for row in world.reviews():
            if row.mr_number in held:
                assert row.lease_until is not None, row
                leases[row.mr_number] = wall_time(row.lease_until)
        requeued_at: dict[int, float] = {}  # when each of its reviews was seen queued again

        def all_done() -> bool:
            rows = world.reviews()
            for row in rows:
                again = row.status == ReviewStatus.QUEUED or row.attempts >= 2
                if row.mr_number in held and again:
                    requeued_at.setdefault(row.mr_number, time.time())
            done = {row.mr_number for row in rows if row.status == ReviewStatus.DONE}
            return len(done) == MERGE_REQUESTS and all(row.status in TERMINAL for row in rows)

        wait_for("every merge request to be reviewed", all_done, SETTLE_S, interval_s=0.5)
        wall_s = time.monotonic() - started
    survivors = [w for w in scale.workers if w is not killed]
    assert all(w.process.returncode == 0 for w in survivors), [w.output()[-3000:] for w in survivors]

    rows = world.reviews()
    assert len(rows) == MERGE_REQUESTS, rows  # one review a merge request: none created twice
    retried = {row.mr_number: row for row in rows if row.mr_number in held}
    for number, row in retried.items():
        assert row.attempts >= 2, row  # run again after the kill, not finished by the dead worker
        assert row.started_at is not None
        assert wall_time(row.started_at) >= leases[number] - 0.5, "taken over before the lease expired"
    # Each merge request's summary was created once, and every worker created some.
    by_worker = scale.summaries_by_worker()
    assert sum(by_worker.values()) == MERGE_REQUESTS, by_worker
    assert set(by_worker) == {w.name for w in scale.workers}, by_worker

    requeued = min(requeued_at.values()) - killed_at
    rerun = min(wall_time(row.started_at) for row in retried.values() if row.started_at) - killed_at
    spread = ", ".join(f"{w.name} {by_worker[w.name]}" for w in scale.workers)
    name = (
        f"{WORKERS} workers and one API-only serve, {MERGE_REQUESTS} merge requests by signed webhook "
        f"(tiny student on vLLM); kill -9 {killed.name} after {len(done_before)} done, running "
        f"{len(held)} review(s): queued again {requeued:.0f} s after the kill (lease TTL {LEASE_TTL_S} s, "
        f"sweep every 6 s), run again after {rerun:.0f} s (behind the queue's backlog); "
        f"summaries posted: {spread}; all done in {wall_s:.0f} s"
    )
    tally = world.tally(name, faults=1, reviewed=mrs)
    assert (tally.completed, tally.duplicates, tally.stuck, tally.lost) == (MERGE_REQUESTS, 0, 0, 0), tally
