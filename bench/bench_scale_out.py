"""Benchmark: the scaled-out topology on one machine, with one worker and with several in the same run.

    .venv/bin/python bench/bench_scale_out.py [--merge-requests 50] [--workers 3] [--threads 2]
                                              [--rounds 1] [--warm-up 6]

The topology of ``tests/faults/test_scale_out.py`` (``tests/faults/fleet.py``): one ``reviewbot serve``
(the API only: the queue is on Redis), N ``reviewbot worker`` processes of ``--threads`` consumer
threads each, a PostgreSQL cluster and a Redis of the benchmark's own, the fake GitLab on a real
port, and the real vLLM server with the tiny student (built and started here, about two minutes).
Each run gets a fresh database, Redis and forge; ``--merge-requests`` signed ``open`` webhooks go
to the API, and the wall time runs from the first delivery to the last review done, the workers
already consuming. Every run is counted as the fault tests count: reviews done, duplicates, stuck
and lost, and the summaries each worker created.

A warm-up run comes first and is not timed: vLLM's first structured-output requests compile their
grammars, and the first reviews of a fresh server take several times longer than the rest.

What the ratio means: every process (vLLM on the CPU, PostgreSQL, the API, the workers) shares this
machine's cores, so more workers only overlap the time a review spends waiting (on the forge, the
database, a model call that vLLM batches with others); it is not how reviews scale over hosts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.faults.fleet import fleet
from tests.faults.world import Tally, open_world
from tests.support.processes import Postgres, postgres, redis_server, wait_for
from tests.support.synthetic import review_examples
from tests.support.tiny_model import build_tiny_student, pretrain
from tests.support.vllm_server import start_vllm

SETTLE_S = 1800  # one run's reviews, on a busy machine


@dataclass
class Run:
    merge_requests: int
    workers: int
    threads: int
    wall_s: float
    tally: Tally
    summaries: Counter[str]  # summary notes created, by worker
    load: tuple[float, float, float]  # the machine's load average when the run started

    def line(self) -> str:
        t = self.tally
        spread = ", ".join(f"{name} {n}" for name, n in sorted(self.summaries.items()))
        return (
            f"{self.workers} worker(s) x {self.threads} threads: {t.completed} reviews in "
            f"{self.wall_s:6.1f} s ({60 * t.completed / self.wall_s:5.1f}/min; "
            f"load average at start {self.load[0]:.1f}); "
            f"duplicates {t.duplicates}, stuck {t.stuck}, lost {t.lost}, failed {t.failed}; "
            f"summaries by worker: {spread}"
        )

    def counted(self) -> bool:
        """Every merge request reviewed once: done, its summary created once, nothing duplicated,
        stuck or lost."""
        t, n = self.tally, self.merge_requests
        once = sum(self.summaries.values()) == n
        return (t.completed, t.duplicates, t.stuck, t.lost) == (n, 0, 0, 0) and once


def one_run(
    server: Postgres, model_url: str, merge_requests: int, workers: int, threads: int, logs: Path
) -> Run:
    """``merge_requests`` reviews by ``workers`` workers on a fresh database, Redis and forge."""
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        database_url = server.create_database(f"bench_{uuid.uuid4().hex[:12]}")
        world = stack.enter_context(open_world("postgres-redis", database_url, redis.url(), logs))
        mrs = [world.add_merge_request(changed=(n % 30,)) for n in range(merge_requests)]
        settings = {"student_base_url": model_url, "student_model": "tiny-student", "llm_max_retries": "3"}
        with fleet(world, workers, settings, threads) as scale:
            load = os.getloadavg()
            started = time.monotonic()
            statuses = scale.deliver(mrs)
            if set(statuses.values()) != {202}:
                raise RuntimeError(f"deliveries refused: {statuses}")
            wait_for(
                f"{merge_requests} reviews",
                lambda: len(scale.done()) == merge_requests and world.settled(),
                SETTLE_S,
                interval_s=0.2,
            )
            wall_s = time.monotonic() - started
        tally = world.tally(f"{workers} worker(s)", faults=0, reviewed=mrs)
        return Run(merge_requests, workers, threads, wall_s, tally, scale.summaries_by_worker(), load)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--merge-requests", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3, help="worker processes of the scaled-out run")
    parser.add_argument("--threads", type=int, default=2, help="consumer threads in each worker")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (1 worker, then --workers)")
    parser.add_argument("--warm-up", type=int, default=6, help="reviews of the untimed first run")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, shared by vLLM (CPU), PostgreSQL, the API and the workers")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        started = time.monotonic()
        student = build_tiny_student(root / "student")
        pretrain(student, review_examples(80), epochs=3)  # as in the tests: short, well-formed answers
        vllm = start_vllm(student.path, "tiny-student", {}, root / "vllm.log")
        stack.callback(vllm.stop)
        ready_s = time.monotonic() - started
        print(f"tiny student and vLLM ready in {ready_s:.0f} s (vLLM start {vllm.started_in_s:.0f} s)")
        server = stack.enter_context(postgres())
        warm = one_run(server, vllm.base_url, args.warm_up, args.workers, args.threads, root / "warm-up")
        print(f"warm-up (not timed): {warm.line()}")
        runs: list[Run] = []
        for round_ in range(args.rounds):
            for workers in (1, args.workers):
                logs = root / f"{round_}-{workers}"
                run = one_run(server, vllm.base_url, args.merge_requests, workers, args.threads, logs)
                print(run.line(), flush=True)
                runs.append(run)
        wrong = [run for run in [warm, *runs] if not run.counted()]
        one = [run.wall_s for run in runs if run.workers == 1]
        many = [run.wall_s for run in runs if run.workers == args.workers]
        ratios = ", ".join(f"{m / o:.2f}" for o, m in zip(one, many, strict=True))
        print(
            f"wall time, {args.workers} workers / 1 worker: {ratios} "
            f"({args.merge_requests} reviews, {args.threads} threads a worker, {os.cpu_count()} cores)"
        )
        if wrong:
            sys.exit(f"count check failed: {[run.line() for run in wrong]}")


if __name__ == "__main__":
    main()
