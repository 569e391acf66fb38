"""The scaled-out topology on one machine, without containers: one ``reviewbot serve`` (the API only:
with the queue on Redis it runs no consumer) and N ``reviewbot worker`` processes on a world's
database and queue. Each worker signs in to the forge with a personal access token of its own for
the same bot account, so the forge's log says which worker posted each review; the lease table
(owner ``host:pid:…``) says which worker is running which review now. Used by
``tests/faults/test_scale_out.py`` and ``bench/bench_scale_out.py``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from sqlmodel import Session, col, select

from bot.models import Lease, ReviewStatus
from bot.queue.lease import review_lease
from bot.queue.schedule import alive_consumers
from tests.faults.world import BOT_TOKEN, TOKEN_ENV, World, delivery, send
from tests.support.fake_gitlab import MergeRequest
from tests.support.processes import Reviewbot, start_serve, start_worker, wait_for

SUMMARY = r"/merge_requests/\d+/notes$"  # POST: a merge request's summary note created
IN_FLIGHT = 8  # deliveries sent at once, as a forge's burst


def _pid(owner: str) -> int:
    """The process of a lease's owner, ``host:pid:unique``."""
    return int(owner.split(":")[1])


def _consumer_pids(world: World) -> set[int]:
    """The processes consuming the queue now, from their schedulers' heartbeats."""
    return {_pid(owner) for owner in alive_consumers(world.engine)}


@dataclass
class Fleet:
    world: World
    serve: Reviewbot
    url: str  # the API's base URL
    workers: list[Reviewbot]
    tokens: dict[str, str]  # forge token -> the name of the worker that uses it

    def deliver(self, mrs: Sequence[MergeRequest]) -> dict[int, int]:
        """Each merge request's signed ``open`` webhook to the API, ``IN_FLIGHT`` at a time; the
        status each got, by merge request number."""
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            statuses = pool.map(lambda mr: send(self.url, *delivery(mr)[1:]), mrs)
            return {mr.iid: status for mr, status in zip(mrs, statuses, strict=True)}

    def done(self) -> set[int]:
        """The merge requests with a done review."""
        return {r.mr_number for r in self.world.reviews() if r.status == ReviewStatus.DONE}

    def reviewing(self, worker: Reviewbot) -> list[int]:
        """The merge requests whose review lease ``worker`` holds: the reviews it is running (a
        killed worker's leases stay until another worker takes them over)."""
        with Session(self.world.engine) as session:
            leases = session.exec(select(Lease).where(col(Lease.name).startswith("review:"))).all()
        held = {row.name for row in leases if _pid(row.owner) == worker.pid}
        numbers = self.world.fake.projects[0].merge_requests
        return sorted(n for n in numbers if review_lease(self.world.project_id, n) in held)

    def consumers(self) -> set[int]:
        return _consumer_pids(self.world)

    def summaries_by_worker(self) -> Counter[str]:
        """Summary notes created on the forge (answered 2xx), by the worker whose token created them."""
        created = self.world.forge_log.matching("POST", SUMMARY, answered=True)
        return Counter(
            self.tokens[request.token]
            for request in created
            if request.status is not None and request.status < 300 and request.token in self.tokens
        )


def _consuming(world: World, workers: list[Reviewbot]) -> bool:
    """Every worker's scheduler has said it is alive (it consumes the queue); a worker that exited
    is an error, with its output."""
    for worker in workers:
        if not worker.running():
            raise RuntimeError(f"{worker.name} exited:\n{worker.output()[-3000:]}")
    alive = _consumer_pids(world)
    return all(worker.pid in alive for worker in workers)


@contextmanager
def fleet(world: World, workers: int, settings: dict[str, str], threads: int = 2) -> Iterator[Fleet]:
    """``reviewbot serve`` and ``workers`` ``reviewbot worker`` processes (``threads`` consumer threads
    each) on ``world`` with ``settings``, once every worker is consuming; all stopped (SIGTERM) after."""
    env = world.env(**settings)
    bot = world.fake.users[BOT_TOKEN]
    with ExitStack() as stack:
        serve, url = start_serve("serve", env, world.log_dir)
        stack.callback(serve.stop)
        started: list[Reviewbot] = []
        tokens: dict[str, str] = {}
        for n in range(1, workers + 1):
            name, token = f"worker-{n}", f"{BOT_TOKEN}-{n}"
            world.fake.users[token] = bot  # another personal access token of the bot account
            worker = start_worker(name, {**env, TOKEN_ENV: token}, world.log_dir, workers=threads)
            stack.callback(worker.stop)
            started.append(worker)
            tokens[token] = name
        wait_for("every worker to consume the queue", lambda: _consuming(world, started), 120, 0.2)
        yield Fleet(world, serve, url, started, tokens)
