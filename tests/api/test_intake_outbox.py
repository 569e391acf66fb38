"""The intake writes a delivery and its jobs in one transaction (the outbox), many deliveries to a
transaction when they arrive together, and answers each only once it is committed."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from bot import db
from bot.api import create_app
from bot.api.group_commit import GroupCommit
from bot.models import Delivery, Outbox, Review
from bot.outbox import Job, job_of
from bot.queue import Queue
from tests.api.test_webhooks import Wakes, add_project, count, github_headers, opened_for, staged
from tests.support.fixtures import FIXTURES
from tests.support.live_server import live_server
from tests.support.processes import Redis, wait_for
from tests.support.secrets import settings_with_key

THREAD = FIXTURES / "github" / "webhooks" / "pull_request_review_thread.resolved.1.json"


def test_the_queue_being_down_loses_no_feedback_job(engine: sa.Engine) -> None:
    """Reproduced on the old intake: with the queue down the first delivery got 500, the forge's
    retry "200 duplicate", and no feedback job existed. Now the job is an outbox row committed with
    the delivery, and it reaches the queue once the queue is back."""
    body = THREAD.read_bytes()
    add_project(engine, "github", json.loads(body)["repository"]["full_name"])
    redis = Redis()  # its port is chosen, nothing listens there yet: the queue is down
    queue = Queue(settings_with_key(queue_url=redis.url()), engine)
    try:
        with TestClient(create_app(engine, queue, queue.settings)) as client:
            headers = github_headers(body, "pull_request_review_thread")
            first = client.post("/webhooks/github", content=body, headers=headers)
            assert first.status_code == 202, first.json()
            again = client.post("/webhooks/github", content=body, headers=headers)
            assert again.status_code == 200
            assert "duplicate" in again.json()["detail"]
        with Session(engine) as session:
            delivery = session.exec(select(Delivery)).one()
            rows = session.exec(select(Outbox)).all()
        assert [job_of(row)[0] for row in rows] == [Job.FEEDBACK]
        assert job_of(rows[0])[1][1] == delivery.id
        assert rows[0].sent_at is None  # the relay could not send it: it waits in the outbox

        redis.start()
        queue.relay.send_all()  # what the relay's retry or the periodic re-send does
        wait_for("the job to be marked sent", lambda: _unsent(engine) == 0, 30)
        assert queue.huey.pending_count() == 1  # on the queue once
    finally:
        queue.relay.stop()
        redis.remove()


def _unsent(engine: sa.Engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all())


def test_deliveries_arriving_together_share_transactions_and_each_gets_its_own_answer(
    engine: sa.Engine,
) -> None:
    """A burst over real HTTP, every review delivery sent twice at once (a forge's retry racing the
    original): each id is recorded once, each review queued once, every request answered."""
    add_project(engine, "github", "a/one")
    body = opened_for("a/one")
    labeled = (FIXTURES / "github" / "webhooks" / "pull_request.labeled.1.json").read_bytes()
    labeled = labeled.replace(b'"Codertocat/Hello-World"', b'"a/one"')
    wakes = Wakes()
    requests = []
    for i in range(60):
        delivery = str(uuid.uuid4())
        if i % 3 == 0:
            requests += [(body, delivery)] * 2
        else:
            requests.append((labeled, delivery))
    with live_server(create_app(engine, wakes, settings_with_key())) as url:

        def post(request: tuple[bytes, str]) -> int:
            content, delivery = request
            headers = github_headers(content, "pull_request", delivery=delivery)
            response = httpx.post(f"{url}/webhooks/github", content=content, headers=headers, timeout=30)
            return response.status_code

        with ThreadPoolExecutor(max_workers=32) as pool:
            statuses = Counter(pool.map(post, requests))
    reviews = staged(engine, Job.REVIEW)
    assert statuses == {202: 20, 200: 60}  # 20 queued; 40 ignored (labeled) and 20 duplicates
    assert len(reviews) == len({args[0] for args in reviews}) == count(engine, Review) == 20
    assert count(engine, Delivery) == 60
    assert 0 < wakes.count <= 20  # once per transaction that staged jobs


def _blocked_first(
    engine: sa.Engine, items: list[int], write_item: Callable[[Session, int], None]
) -> tuple[list[int | BaseException], list[list[int]]]:
    """Submits 0, holds the writer inside it until ``items`` are all queued, then lets it go: the
    results, and the batches committed."""
    first_written, release = threading.Event(), threading.Event()

    def write(session: Session, item: int) -> int:
        if item == 0:
            first_written.set()
            release.wait(10)
        write_item(session, item)
        return item

    batches: list[list[int]] = []
    writer = GroupCommit(engine, write, lambda results: batches.append(list(results)))

    async def submit_all() -> list[int | BaseException]:
        first = asyncio.ensure_future(writer.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, first_written.wait, 10)
        others = [asyncio.ensure_future(writer.submit(item)) for item in items]
        await asyncio.sleep(0.1)
        release.set()
        return await asyncio.gather(first, *others, return_exceptions=True)

    return asyncio.run(submit_all()), batches


@pytest.fixture
def items_table(engine: sa.Engine) -> sa.Table:
    table = sa.Table("group_commit_items", sa.MetaData(), sa.Column("item", sa.Integer, primary_key=True))
    table.create(engine)
    return table


def _stored(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(table.c.item)).scalars())


def test_what_arrives_while_a_batch_is_written_is_the_next_batch(
    engine: sa.Engine, items_table: sa.Table
) -> None:
    commits = Counter[str]()
    sa.event.listen(engine, "commit", lambda _connection: commits.update(["commit"]))

    def insert(session: Session, item: int) -> None:
        session.connection().execute(items_table.insert().values(item=item))

    results, batches = _blocked_first(engine, [1, 2, 3, 4, 5], insert)
    assert results == [0, 1, 2, 3, 4, 5]
    assert batches == [[0], [1, 2, 3, 4, 5]]
    assert commits["commit"] == 2
    assert _stored(engine, items_table) == [0, 1, 2, 3, 4, 5]


def test_one_bad_item_fails_only_its_own_request(engine: sa.Engine, items_table: sa.Table) -> None:
    """A batch whose transaction fails is written again item by item: the bad one fails alone."""

    def insert(session: Session, item: int) -> None:
        session.connection().execute(items_table.insert().values(item=1 if item == 3 else item))

    results, batches = _blocked_first(engine, [1, 2, 3, 4, 5], insert)
    assert results[:3] == [0, 1, 2]
    assert isinstance(results[3], sa.exc.IntegrityError)  # 3 writes item 1 again
    assert results[4:] == [4, 5]
    assert batches == [[0], [1], [2], [4], [5]]  # the batch of 1..5 failed, then each alone
    assert _stored(engine, items_table) == [0, 1, 2, 4, 5]


def test_a_lone_item_is_written_at_once(engine: sa.Engine) -> None:
    """Nothing waits for a batch to fill: items one after another are batches of one."""
    written: list[list[int]] = []
    writer = GroupCommit(engine, lambda _session, item: item, written.append)

    async def one_by_one() -> list[int]:
        return [await writer.submit(item) for item in range(3)]

    assert asyncio.run(one_by_one()) == [0, 1, 2]
    assert written == [[0], [1], [2]]


def test_a_writer_without_its_database_fails_each_request_and_tries_again(tmp_path: Path) -> None:
    """No connection (here: a SQLite file in a folder that is not there): each request gets the
    database's error, none waits forever, and the next one tries again."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'missing' / 'reviewbot.db'}")
    writer = GroupCommit(engine, lambda _session, item: item, lambda _results: None)

    async def twice() -> list[int | BaseException]:
        results: list[int | BaseException] = []
        for item in range(2):
            try:
                results.append(await asyncio.wait_for(writer.submit(item), 10))
            except sa.exc.OperationalError as exc:
                results.append(exc)
        return results

    results = asyncio.run(twice())
    assert all(isinstance(result, sa.exc.OperationalError) for result in results)
    (tmp_path / "missing").mkdir()
    assert asyncio.run(writer.submit(7)) == 7
