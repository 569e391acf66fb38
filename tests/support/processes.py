"""Real processes for the fault tests, to be killed and restarted at will: a PostgreSQL and a Redis of
the test's own (never the machine's shared ones), and ``reviewbot serve`` / ``reviewbot worker``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from tests.support.vllm_server import ROOT, free_port


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> None:
    """Poll ``ready`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def _private_dir(prefix: str, owner: str | None) -> Path:
    # Under /tmp itself: pytest's tmp_path is private to root, and PostgreSQL runs as its own user.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        shutil.chown(path, owner)
    return path


class Postgres:
    """A PostgreSQL cluster of its own (initdb) on a free port, trust auth, fsync off."""

    def __init__(self) -> None:
        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            raise RuntimeError("initdb and pg_ctl must be on PATH to start a PostgreSQL of the test's own")
        # PostgreSQL refuses to run as root; as root, run it as the postgres user.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = _private_dir("reviewbot-pg-", "postgres" if self._as else None)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.log)
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, as a restart by an operator; ``immediate``: a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


class Redis:
    """A redis-server of its own on a free port, with an append-only file synced at every write, so a
    stop and start keeps what was queued (as a production Redis configured for a job queue does)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server must be on PATH to start a Redis of the test's own")
        self.root = _private_dir("reviewbot-redis-", None)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.root / "redis.log")]
        self.process = subprocess.Popen(["redis-server", *args], start_new_session=True)
        wait_for("redis-server to answer PING", self._answers, 30)

    def stop(self) -> None:
        """SIGTERM: Redis finishes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[Redis]:
    server = Redis()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def reviewbot_env(**settings: str) -> dict[str, str]:
    """The environment of a reviewbot process: this one's, less any REVIEWBOT_* or forge token, plus
    ``settings`` as REVIEWBOT_<NAME> (``database_url=...`` → ``REVIEWBOT_DATABASE_URL``)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("REVIEWBOT_") and name not in ("GITLAB_TOKEN", "GITHUB_TOKEN")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"REVIEWBOT_{name.upper()}": value for name, value in settings.items()})
    return env


def run_reviewbot(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``reviewbot ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )


@dataclass
class Reviewbot:
    """A running ``reviewbot`` command; its output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """``kill -9``: no handler, no clean-up, as the out-of-memory killer does it."""
        self.send(signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if not self.running():
            return
        self.send(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_reviewbot(name: str, env: dict[str, str], *args: str, log_dir: Path) -> Reviewbot:
    """``reviewbot ARGS`` in the background, in a session of its own (a signal reaches it alone)."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Reviewbot(name, process, log_path)


def start_worker(name: str, env: dict[str, str], log_dir: Path, *options: str, workers: int = 1) -> Reviewbot:
    """``reviewbot worker --workers N OPTIONS``."""
    return start_reviewbot(name, env, "worker", "--workers", str(workers), *options, log_dir=log_dir)


def start_serve(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[Reviewbot, str]:
    """``reviewbot serve`` on a free port (or ``port``), once ``/healthz`` answers 200; and its URL."""
    port = port or free_port()
    server = start_reviewbot(name, env, "serve", "--port", str(port), log_dir=log_dir)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not server.running():
            raise RuntimeError(f"reviewbot serve exited:\n{server.output()[-3000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("reviewbot serve to answer /healthz", healthy, 60, interval_s=0.2)
    return server, base
