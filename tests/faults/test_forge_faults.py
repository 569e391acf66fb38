"""A forge that fails under a real ``reviewbot worker``: 5xx then 200 is retried, 429 with Retry-After
is retried no sooner than it asked, and a merge request deleted (a permanent 404) fails its review at
once with the reason. None is stuck, none posted twice."""

from __future__ import annotations

import itertools

from tests.faults.world import World
from tests.support.processes import start_worker, wait_for

MR_PATH = r"/merge_requests/{iid}$"  # GET: the merge request itself, not its versions or notes
RETRY_AFTER_S = 3
SETTLE_S = 150


def test_forge_errors_are_retried_delayed_or_failed_never_stuck(world: World) -> None:
    flaky, limited, deleted = (world.add_merge_request() for _ in range(3))
    # Past the adapter's own quick retries (two), so the job itself fails and the queue retries it.
    world.fake.fail("GET", MR_PATH.format(iid=flaky.iid), 500, times=3)
    world.fake.fail(
        "GET", MR_PATH.format(iid=limited.iid), 429, times=3, headers={"Retry-After": str(RETRY_AFTER_S)}
    )
    reviews = {mr.iid: world.add_review(mr) for mr in (flaky, limited, deleted)}
    del world.fake.projects[0].merge_requests[deleted.iid]  # deleted after its webhook

    worker = start_worker("worker", world.env(), world.log_dir, workers=2)
    try:
        wait_for("every review to settle", world.settled, SETTLE_S, interval_s=0.5)
    finally:
        worker.stop()
    output = worker.output()[-3000:]

    assert world.review(reviews[flaky.iid]).status == "done", output
    assert world.review(reviews[limited.iid]).status == "done", output
    gone = world.review(reviews[deleted.iid])
    assert gone.status == "failed", output
    assert "404" in (gone.error or ""), gone.error
    assert gone.attempts == 1  # not retried: a deleted merge request does not come back

    # The 429: every retry came no sooner than Retry-After asked, the queue's own included.
    asked = world.forge_log.matching("GET", MR_PATH.format(iid=limited.iid))
    statuses = [r.status for r in asked]
    assert statuses[:3] == [429, 429, 429], statuses
    assert statuses[-1] == 200, statuses
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(asked)][:3]
    assert min(gaps) >= RETRY_AFTER_S - 0.2, gaps
    # The 500s: the adapter's quick retries, then the queue's retry.
    flaky_statuses = [r.status for r in world.forge_log.matching("GET", MR_PATH.format(iid=flaky.iid))]
    assert flaky_statuses[:3] == [500, 500, 500], flaky_statuses
    assert flaky_statuses[-1] == 200, flaky_statuses

    tally = world.tally(
        f"forge 500x3 then 200, 429x3 with Retry-After {RETRY_AFTER_S} s (queue's delay "
        f"{gaps[-1]:.1f} s), 404 for a deleted MR",
        faults=3 + 3 + 1,
        reviewed=[flaky, limited],
        failing=(deleted,),
    )
    counted = (tally.completed, tally.failed, tally.duplicates, tally.stuck, tally.lost)
    assert counted == (2, 1, 0, 0, 0), tally
    for mr in (flaky, limited):
        findings = [fp for kind, fp in world.bot_markers(mr) if kind == "finding"]
        assert len(findings) == 2
