"""Load benchmark: a real ``reviewbot serve`` process under a real load tool, closed and open loop.

    .venv/bin/python bench/bench_load.py [--postgres] [--connections 50] [--seconds 10] [--rate 200]
                                         [--profile FILE] [-- SERVE OPTIONS]

Starts ``reviewbot serve`` (SQLite database and queue in a temporary folder; with ``--postgres``, a
fresh PostgreSQL schema and a Redis database of its own), registers a GitHub project with
``reviewbot project add``, and signs ``pull_request`` deliveries with unique ids: one in
``--qualifying`` is a ``synchronize`` (records the delivery, queues a review: one outbox row), the
rest ``labeled`` (recorded and ignored), as the issue measured. Then:

- closed loop: wrk, ``--connections`` connections for ``--seconds``, a Lua script rotating the
  pre-signed bodies and giving every request an id of its own; deliveries/s, p50 and p99;
- open loop: an asyncio client sending ``--rate`` deliveries/s on a fixed schedule, each latency
  measured from its scheduled send time (a stalled server is not hidden: no coordinated omission);
- the same two loads on ``/healthz`` (no webhook work), the baseline of the same run;
- the server's CPU time per delivery in the closed loop (less sensitive to a busy machine than the
  rates are);
- the count check: every qualifying delivery recorded has its review and exactly one outbox row
  (lost 0, duplicated 0), and as many were recorded as were answered 202, plus those the load
  tool's stop cut off in flight.

The server runs with ``--workers 0`` (no embedded job consumer) unless other ``serve`` options are
given after ``--``: the benchmark's reviews have no forge to talk to and fail at once, costing tens
of milliseconds of CPU each and retrying, which is not what a real review (waiting on the forge and
the model) costs the host; the jobs stay queued and the relay's work is measured.

Needs wrk (``apt-get install -y wrk``); ``--profile`` needs py-spy (samples the server during the
closed loop: collapsed stacks of the thread holding the GIL). Nothing leaves the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.support.fixtures import FIXTURES
from tests.support.vllm_server import free_port

WEBHOOKS = FIXTURES / "github" / "webhooks"
REPO = "Codertocat/Hello-World"
SECRET = "bench-load-secret"
BIN = Path(sys.executable).parent
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
OPEN_LOOP_CONNECTIONS = 64

LUA = r"""
-- Rotates pre-signed bodies; each request carries a delivery id of its own (ids file, one a line).
local threads, next_id = {}, 1
function setup(thread)
  thread:set("tid", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end
function init(args)
  local data = dofile(args[1])
  bodies, sigs, path = data.bodies, data.sigs, args[2]
  first, last, stride = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  ids = {}
  local n = 0
  for line in io.lines(args[6]) do
    n = n + 1
    if n >= first and n <= last then ids[#ids + 1] = line end
  end
  at, sent, statuses = tid, 0, {}
end
function request()
  local i = ((at - 1) % #ids) + 1  -- past the end: repeats, answered "duplicate"
  at = at + stride
  sent = sent + 1
  local k = ((first + i - 2) % #bodies) + 1
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json", ["X-GitHub-Event"] = "pull_request",
    ["X-GitHub-Delivery"] = ids[i], ["X-Hub-Signature-256"] = sigs[k],
  }, bodies[k])
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total, sent_all = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
    sent_all = sent_all + thread:get("sent")
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', status, n) end
  io.write(string.format('BENCH {"statuses": {%s}, "sent": %d, "p50_us": %d, "p99_us": %d}\n',
    table.concat(parts, ", "), sent_all, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Deliveries:
    """Pre-signed bodies (every ``qualifying``-th a synchronize, the rest labeled) and unique ids."""

    folder: Path
    qualifying: int
    bodies: list[bytes] = field(default_factory=list)
    used: int = 0  # ids handed out so far: every run gets ids never sent before

    def __post_init__(self) -> None:
        labeled = json.loads((WEBHOOKS / "pull_request.labeled.1.json").read_bytes())
        synchronize = json.loads((WEBHOOKS / "pull_request.synchronize.1.json").read_bytes())
        for k in range(self.qualifying * 8 or 8):
            if self.qualifying and k % self.qualifying == 0:  # a push to merge request k
                synchronize["number"] = synchronize["pull_request"]["number"] = k + 1
                synchronize["pull_request"]["head"]["sha"] = hashlib.sha1(str(k).encode()).hexdigest()
                self.bodies.append(json.dumps(synchronize).encode())
            else:
                labeled["label"]["name"] = f"label-{k}"
                self.bodies.append(json.dumps(labeled).encode())
        sigs = [_signature(body) for body in self.bodies]
        lua_strings = ", ".join(f"[==[{body.decode()}]==]" for body in self.bodies)
        (self.folder / "bodies.lua").write_text(
            "return { bodies = {" + lua_strings + "}, sigs = {" + ", ".join(f'"{s}"' for s in sigs) + "} }"
        )
        (self.folder / "deliver.lua").write_text(LUA)

    def take(self, count: int) -> tuple[int, int]:
        """1-based line range of ``count`` fresh ids (appended to the ids file)."""
        with (self.folder / "ids.txt").open("a") as ids:
            ids.writelines(f"{uuid.uuid4()}\n" for _ in range(count))
        first = self.used + 1
        self.used += count
        return first, self.used

    def body_of(self, line: int) -> bytes:
        return self.bodies[(line - 1) % len(self.bodies)]


def _signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Result:
    label: str
    per_s: float
    p50_ms: float
    p99_ms: float
    statuses: Counter[int]

    def line(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.label:>44}: {self.per_s:8.0f}/s  p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms"
            f"  ({codes})"
        )


def wrk(url: str, connections: int, seconds: float, script: list[str] | None = None) -> Result:
    threads = 2
    command = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    if script:
        command += ["-s", script[0], url, "--", *script[1:]]
    else:
        command.append(url)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    per_s = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if script:
        data = json.loads(out.split("BENCH ", 1)[1].splitlines()[0])
        statuses = Counter({int(k): v for k, v in data["statuses"].items()})
        return Result("", per_s, data["p50_us"] / 1000, data["p99_us"] / 1000, statuses)
    p50, p99 = (_wrk_ms(out, q) for q in ("50%", "99%"))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = int(errors.group(1)) if errors else 0
    return Result("", per_s, p50, p99, Counter({200: total - bad, 0: bad} if bad else {200: total}))


def _wrk_ms(out: str, quantile: str) -> float:
    value, unit = re.search(rf"{quantile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def closed_deliveries(base: str, deliveries: Deliveries, connections: int, seconds: float) -> Result:
    first, last = deliveries.take(int(seconds * 4000))  # more than any run sends: no id repeats
    folder = deliveries.folder
    script = [str(folder / "deliver.lua"), str(folder / "bodies.lua"), "/webhooks/github"]
    script += [str(first), str(last), "2", str(folder / "ids.txt")]
    result = wrk(f"{base}/webhooks/github", connections, seconds, script)
    return result


async def _open_loop(port: int, rate: float, requests: list[bytes]) -> Result:
    """Sends ``requests[i]`` at ``start + i / rate`` over a pool of kept-alive connections; a request
    due while every connection is busy waits for one, and that wait is part of its latency."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = loop.time() + 0.2

    async def schedule() -> None:
        for i in range(len(requests)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            due.put_nowait((i, start + i / rate))
        for _ in range(OPEN_LOOP_CONNECTIONS):
            due.put_nowait(None)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await due.get()) is not None:
            i, when = item
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(loop.time() - when)  # from when it was due, not when it was sent
            statuses[int(head.split(b" ", 2)[1])] += 1
        writer.close()

    await asyncio.gather(schedule(), *(connection() for _ in range(OPEN_LOOP_CONNECTIONS)))
    ms = sorted(v * 1000 for v in latencies)
    return Result(
        "", len(ms) / (loop.time() - start), statistics.median(ms), ms[int(len(ms) * 0.99)], statuses
    )


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def open_loop(port: int, rate: float, seconds: float, deliveries: Deliveries | None = None) -> Result:
    count = int(rate * seconds)
    if deliveries is None:
        requests = [http_request("GET", "/healthz", {})] * count
    else:
        first, _ = deliveries.take(count)
        ids = (deliveries.folder / "ids.txt").read_text().splitlines()
        requests = []
        for line in range(first, first + count):
            body = deliveries.body_of(line)
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": ids[line - 1],
                "X-Hub-Signature-256": _signature(body),
            }
            requests.append(http_request("POST", "/webhooks/github", headers, body))
    return asyncio.run(_open_loop(port, rate, requests))


@contextlib.contextmanager
def database(postgres: bool, folder: Path, redis_db: int) -> Iterator[tuple[str, str]]:
    """(database URL, queue URL): SQLite files in ``folder``, or a fresh PostgreSQL schema and
    Redis database ``redis_db`` (emptied before and after)."""
    if not postgres:
        yield f"sqlite:///{folder / 'reviewbot.db'}", f"sqlite:///{folder / 'queue.db'}"
        return
    import redis

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    queue = f"redis://127.0.0.1:6379/{redis_db}"
    redis.Redis.from_url(queue).flushdb()
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False), queue
    finally:
        redis.Redis.from_url(queue).flushdb()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def reviewbot(env: dict[str, str], *args: str) -> None:
    subprocess.run([str(BIN / "reviewbot"), *args], env=env, check=True, capture_output=True)


@contextlib.contextmanager
def server(env: dict[str, str], folder: Path, extra: list[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "reviewbot"), "serve", "--port", str(port), *extra], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"reviewbot serve did not start:\n{(folder / 'serve.log').read_text()}")
            time.sleep(0.1)
        yield base, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_check(url: str, answered: Counter[int]) -> tuple[bool, str]:
    """Every qualifying delivery recorded has its review and exactly one outbox row for it; none
    answered 202 is missing. wrk stops with requests in flight: those may be recorded unanswered."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        recorded = connection.execute(sa.text("SELECT count(*) FROM delivery")).scalar_one()
        qualifying = connection.execute(
            sa.text("SELECT count(*) FROM delivery WHERE outcome LIKE 'review % queued'")
        ).scalar_one()
        reviews = connection.execute(sa.text("SELECT count(*) FROM review")).scalar_one()
        jobs = [
            row[0] if isinstance(row[0], list) else json.loads(row[0])
            for row in connection.execute(sa.text("SELECT args FROM outbox WHERE task = 'review'"))
        ]
        others = connection.execute(
            sa.text("SELECT count(*) FROM outbox WHERE task != 'review'")
        ).scalar_one()
    engine.dispose()
    distinct = len({args[0] for args in jobs})
    lost = reviews - distinct + max(0, answered[202] - qualifying)
    duplicated = len(jobs) - distinct
    unanswered = recorded - answered[200] - answered[202]
    ok = lost == duplicated == others == 0 and reviews == qualifying and unanswered >= 0
    return ok, (
        f"qualifying deliveries recorded {qualifying} ({answered[202]} answered 202, the rest cut off "
        f"in flight by the load tool's stop), reviews {reviews}, outbox review rows {len(jobs)} "
        f"({distinct} distinct); lost {lost}, duplicated {duplicated}; all deliveries recorded "
        f"{recorded}, answered {answered[200] + answered[202]} -> {'OK' if ok else 'MISMATCH'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL + Redis instead of SQLite")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="each load's duration")
    parser.add_argument("--rate", type=float, default=200.0, help="open loop: deliveries per second")
    parser.add_argument(
        "--qualifying", type=int, default=10, help="one delivery in N queues a review (0: none)"
    )
    parser.add_argument("--redis-db", type=int, default=12, help="with --postgres: emptied before and after")
    parser.add_argument("--profile", type=Path, help="py-spy the server in the closed loop: collapsed stacks")
    parser.add_argument("--server-log", type=Path, help="keep the server's output in this file")
    parser.add_argument(
        "serve_args", nargs="*", default=["--workers", "0"],
        help="`reviewbot serve` options (after --); default --workers 0: see above",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp, database(args.postgres, Path(tmp), args.redis_db) as urls:
        folder = Path(tmp)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REVIEWBOT_")},
            "REVIEWBOT_DATABASE_URL": urls[0],
            "REVIEWBOT_QUEUE_URL": urls[1],
            "REVIEWBOT_SECRET_KEY": Fernet.generate_key().decode(),
            "BENCH_WEBHOOK_SECRET": SECRET,
        }
        reviewbot(env, "db", "upgrade")
        reviewbot(env, "project", "add", "--forge", "github", "--url", "http://127.0.0.1:9", "--project",
                  REPO, "--secret-env", "BENCH_WEBHOOK_SECRET", "--bot-username", "reviewbot")  # fmt: skip
        deliveries = Deliveries(folder, args.qualifying)
        answered: Counter[int] = Counter()
        with server(env, folder, args.serve_args) as (base, pid):
            where = "PostgreSQL + Redis" if args.postgres else "SQLite"
            print(
                f"reviewbot serve {' '.join(args.serve_args)} on {where}; {args.connections} connections, "
                f"{args.seconds:g} s per load; 1 in {args.qualifying or 'no'} deliveries queues a review"
            )
            answered += closed_deliveries(base, deliveries, args.connections, 2).statuses  # warm-up
            wrk(f"{base}/healthz", args.connections, 2)
            health = wrk(f"{base}/healthz", args.connections, args.seconds)
            profiler = None
            if args.profile:
                profiler = subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "--pid", str(pid), "--format", "raw", "--gil",
                     "--output", str(args.profile), "--duration", str(int(args.seconds)), "--rate", "200",
                     "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            cpu_before = _cpu_s(pid)
            closed = closed_deliveries(base, deliveries, args.connections, args.seconds)
            cpu_ms = (_cpu_s(pid) - cpu_before) * 1000 / max(1, closed.statuses.total())
            if profiler:
                profiler.wait()
            answered += closed.statuses
            port = int(base.rsplit(":", 1)[1])
            health_open = open_loop(port, args.rate, args.seconds)
            steady = open_loop(port, args.rate, args.seconds, deliveries)
            answered += steady.statuses
            time.sleep(0.5)
        if args.server_log:
            shutil.copy(folder / "serve.log", args.server_log)
        closed.label = f"closed loop, {args.connections} connections: deliveries"
        health.label = "/healthz (baseline)"
        steady.label = f"open loop, {args.rate:g}/s: deliveries"
        health_open.label = "/healthz (baseline)"
        for result in (closed, health, steady, health_open):
            print(result.line())
        print(f"closed loop: deliveries/s / healthz/s = {closed.per_s / health.per_s:.2f}; "
              f"open loop p99: deliveries / healthz = {steady.p99_ms / health_open.p99_ms:.2f}")  # fmt: skip
        targets = closed.per_s >= 1000 and steady.p99_ms < 50
        ok, line = count_check(urls[0], answered)
        print(f"server CPU per delivery, closed loop: {cpu_ms:.2f} ms")
        print(f"count check: {line}")
        print(
            f"targets (>= 1000/s closed, p99 < 50 ms at {args.rate:g}/s): {'met' if targets else 'NOT met'}"
        )
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
