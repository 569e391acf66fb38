"""`reviewbot project add` and `reviewbot serve` as a user runs them: a GitHub pull request webhook is
acknowledged, the embedded consumer reviews the PR with the real student, and the findings land on
the (fake) GitHub as one review plus one summary comment. And `reviewbot serve` as a process that
stops: its outbox relay sends at start-up what an earlier run left unsent, and on SIGTERM its
embedded consumer hands back the review it could not finish."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from bot import db
from bot.models import Review, ReviewStatus
from bot.outbox import Job, stage
from bot.queue import Queue
from tests.queue.slow_forge import slow_forge
from tests.support.db import session_scope
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.processes import reviewbot_env, start_reviewbot, wait_for
from tests.support.secrets import SECRET_KEY, project_row, settings_with_key
from tests.support.vllm_server import VLLMServer, free_port

FIXTURE = FIXTURES / "github" / "webhooks" / "pull_request.opened.1.json"
REPO = "octo/shop"
OLD = "".join(f"def price_{i}(cart):\n    return cart.total * {i}\n\n" for i in range(25))
NEW = OLD.replace("cart.total * 3", "eval(cart.total) * 3").replace("cart.total * 17", "cart.total * 17 / 0")


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.add_user("shop-bot", token="bot-token")
    fake.add_collaborator(REPO, "shop-bot", "write")  # `project add` checks the token may write
    fake.add_user("alice", token="alice-token")
    fake.add_pull(REPO, 12, [SeedFile("shop/prices.py", OLD, NEW), SeedFile("logo.png", binary=True)])
    with live_server(fake.app) as url:
        yield fake, url


def reviewbot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.vllm
def test_project_add_then_serve_reviews_a_pull_request(
    github: tuple[FakeGitHub, str], vllm_server: VLLMServer, tmp_path: Path
) -> None:
    fake, url = github
    port = free_port()
    env = {
        **os.environ,
        "COLUMNS": "200",
        "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path}/bot.db",
        "REVIEWBOT_QUEUE_URL": f"sqlite:///{tmp_path}/queue.db",
        "REVIEWBOT_STUDENT_BASE_URL": vllm_server.base_url,
        "REVIEWBOT_STUDENT_MODEL": "tiny-student",
        "REVIEWBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REVIEWBOT_TOKEN_SHOP": "bot-token",
        "REVIEWBOT_ADMIN_TOKEN": "admin-token",
    }
    assert reviewbot(env, "db", "upgrade").returncode == 0  # once per install, as README says
    added = reviewbot(
        env, "project", "add", "--forge", "github", "--url", url, "--project", REPO,
        "--token-env", "REVIEWBOT_TOKEN_SHOP", "--threshold", "trivial",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"webhook URL:    http://127.0.0.1:{port}/webhooks/github" in added.stdout
    assert "(bot: shop-bot)" in added.stdout  # asked GitHub who the token belongs to
    secret = next(
        line.split()[-1] for line in added.stdout.splitlines() if line.startswith("webhook secret:")
    )
    assert "octo/shop" in reviewbot(env, "project", "list").stdout

    server = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

        payload = json.loads(FIXTURE.read_text())
        payload["repository"]["full_name"] = REPO
        payload["number"] = payload["pull_request"]["number"] = 12
        payload["pull_request"]["head"]["sha"] = fake.pulls[(REPO, 12)].head_sha
        body = json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "delivery-1",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        }
        response = httpx.post(f"{base}/webhooks/github", content=body, headers=headers)
        assert response.status_code == 202, response.text

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            listing = reviewbot(env, "project", "reviews", REPO)
            if "done" in listing.stdout or "failed" in listing.stdout:
                break
            time.sleep(1)
        assert "done" in listing.stdout, listing.stdout
        assert (
            httpx.post(f"{base}/webhooks/github", content=body, headers=headers).status_code == 200
        )  # a replay
        assert httpx.get(f"{base}/metrics").status_code == 401
        exposed = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer admin-token"}).text
        assert 'reviewbot_webhook_deliveries_total{forge="github",outcome="queued"} 1.0' in exposed
        assert (
            'reviewbot_webhook_deliveries_total{forge="github",outcome="handled"} 1.0' in exposed
        )  # the replay
        assert 'reviewbot_reviews_total{status="done"} 1.0' in exposed
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert server.returncode is not None, output

    assert len(fake.reviews) == 1
    assert fake.review_comments
    assert all(c.user == "shop-bot" and "reviewbot:finding:" in c.body for c in fake.review_comments.values())
    summaries = [c for c in fake.issue_comments.values() if "reviewbot:summary" in c.body]
    assert len(summaries) == 1
    assert summaries[0].user == "shop-bot"
    assert "logo.png" in summaries[0].body  # the binary file is reported as not reviewed


def test_serve_sends_what_was_left_and_hands_back_on_sigterm(tmp_path: Path) -> None:
    database_url, queue_url = f"sqlite:///{tmp_path}/bot.db", f"sqlite:///{tmp_path}/queue.db"
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    env = reviewbot_env(database_url=database_url, queue_url=queue_url, secret_key=SECRET_KEY)
    env["GITLAB_TOKEN"] = "bot-token"
    with slow_forge() as forge:
        forge.delay_s = 30  # the review hangs on the forge
        with session_scope(engine) as session:
            project = project_row("s", forge="gitlab", forge_url=forge.url, path="g/app")
            session.add(project)
            session.flush()
            assert project.id is not None
            review = Review(project_id=project.id, mr_number=3, head_sha="c" * 40)
            session.add(review)
            session.flush()
            assert review.id is not None
            review_id = review.id
            stage(session, Job.REVIEW, review_id)  # committed; the process that wrote it died before sending

        def status() -> str:
            with Session(engine) as session:
                row = session.get(Review, review_id)
                assert row is not None
                return row.status

        server = start_reviewbot("serve", env, "serve", "--port", str(free_port()), "--shutdown-timeout", "1",
                                 log_dir=tmp_path)  # fmt: skip
        wait_for("the job left in the outbox to run", lambda: status() == ReviewStatus.RUNNING, 60)
        server.send(signal.SIGTERM)
        assert server.wait(30) == 0, server.output()
        with Session(engine) as session:
            row = session.get(Review, review_id)
            assert row is not None
            assert row.status == ReviewStatus.QUEUED, server.output()
            assert row.attempts == 0
            assert row.error == "handed back: its worker stopped"
        queue = Queue(settings_with_key(database_url=database_url, queue_url=queue_url), engine)
        assert queue.huey.pending_count() == 1  # back on the queue, for the next start

        forge.delay_s = 0
        server = start_reviewbot("serve-again", env, "serve", "--port", str(free_port()), log_dir=tmp_path)
        try:
            wait_for("the review to finish", lambda: status() == ReviewStatus.FAILED, 60)
        finally:
            server.stop()
        with Session(engine) as session:
            row = session.get(Review, review_id)
            assert row is not None
            assert row.attempts == 1
            assert "404" in (row.error or "")  # the forge says the merge request is gone
