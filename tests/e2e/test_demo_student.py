"""End to end on the real demo student, SmolLM2-135M-Instruct served by vLLM on the CPU: its own
tokenizer and ChatML template, JSON-constrained answers, through ``reviewbot review``, through a
webhook on the fake GitLab, and with a LoRA adapter trained on it with the trainer's own code and
hot-loaded into the running server.

A 135M model's judgement is weak: the tests assert what the product does with its answers (their
structure, that the server answered every call the review made), never what it thinks of the code.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot import db
from bot.api import create_app
from bot.config import load_settings
from bot.llm import LLMClient
from bot.models import Finding, Review, ReviewStatus, Task
from bot.queue import Queue
from flywheel import registry
from flywheel.finetune import FinetuneConfig, finetune
from prompts import conversation
from tests.conftest import _timings
from tests.e2e.conftest import LORA_RANK
from tests.review.test_review_flow import SECRET, bot_notes, deliver, run_jobs
from tests.support.db import session_scope
from tests.support.demo_student import DemoStudent
from tests.support.fake_gitlab import FakeGitLab, change
from tests.support.gitrepo import commit, git, init_repo
from tests.support.live_server import live_server
from tests.support.processes import reviewbot_env
from tests.support.secrets import project_row, settings_with_key
from tests.support.severity_task import make_examples
from tests.support.vllm_server import VLLMServer

pytestmark = [
    pytest.mark.smollm2,
    # peft reads an attribute that transformers 5 renamed; nothing to act on
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
]

# One short change with a plain bug: one chunk, so one find call and a few rate and explain calls.
BASE = 'def find_user(cursor, name):\n    cursor.execute("SELECT * FROM users WHERE name = ?", (name,))\n'
FEATURE = BASE.replace(
    '"SELECT * FROM users WHERE name = ?", (name,)', "\"SELECT * FROM users WHERE name = '%s'\" % name"
)
STAGES = {"find", "severity", "explanation"}


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(tmp_path_factory.mktemp("repo") / "app", {"db.py": BASE})
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"db.py": FEATURE}, "feature")
    return repo


def served(server: VLLMServer) -> tuple[float, float]:
    """(requests completed, prompt tokens) as vLLM's own metrics count them, all models together."""
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text

    def total(metric: str) -> float:
        return sum(float(m[1]) for m in re.finditer(rf"^vllm:{metric}\{{[^}}]*\}} (\S+)$", text, re.M))

    return total("request_success_total"), total("prompt_tokens_total")


def review(repo: Path, server: VLLMServer, home: Path, **settings: str) -> dict[str, Any]:
    """``reviewbot review --format json`` as a user runs it: the installed command, a process of its own."""
    env = reviewbot_env(
        home=str(home), student_base_url=server.base_url, student_model=server.model, **settings
    )
    command = [str(Path(sys.executable).parent / "reviewbot"), "review", "--repo", str(repo)]
    done = subprocess.run(
        [*command, "--base", "main", "--format", "json", "--threshold", "trivial"],
        env=env, capture_output=True, text=True, timeout=600, cwd=repo.parent,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_answered_by_the_server(
    result: dict[str, Any], before: tuple[float, float], server: VLLMServer
) -> None:
    """Every call the review counted was a request vLLM completed, with the prompt tokens vLLM saw."""
    stages = result["stats"]["stages"]
    assert set(stages) == STAGES
    assert all(stage["failed"] == 0 for stage in stages.values()), stages
    requests, prompt_tokens = served(server)
    assert requests - before[0] == sum(stage["calls"] for stage in stages.values())
    assert prompt_tokens - before[1] == sum(stage["prompt_tokens"] for stage in stages.values())


def test_the_server_uses_the_models_own_tokenizer_and_chatml_template(demo_server: VLLMServer) -> None:
    response = httpx.post(
        demo_server.base_url.removesuffix("/v1") + "/tokenize",
        json={
            "model": demo_server.model,
            "messages": [{"role": "user", "content": "Review this."}],
            "add_generation_prompt": True,
            "return_token_strs": True,
        },
        timeout=30,
    )
    response.raise_for_status()
    tokens = response.json()["token_strs"]
    assert tokens.count("<|im_start|>") == 3  # SmolLM2's default system turn, the user's, the assistant's
    assert tokens.count("<|im_end|>") == 2
    models = httpx.get(f"{demo_server.base_url}/models", timeout=10).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(demo_server.model, 8192)]


def test_review_command_on_a_local_repository(
    feature_repo: Path, demo_server: VLLMServer, tmp_path: Path
) -> None:
    before = served(demo_server)
    result = review(feature_repo, demo_server, tmp_path / "home")
    assert set(result) == {"findings", "skipped", "failed", "stopped", "settings", "stats"}
    assert result["settings"]["source"] is None  # the repository has no .reviewbot.toml
    assert result["failed"] == []
    assert result["stopped"] is None
    assert result["stats"]["models"] == dict.fromkeys(STAGES, demo_server.model)
    assert result["findings"], "the demo student found nothing; the review would show little"
    for finding in result["findings"]:
        assert (finding["path"], finding["side"]) == ("db.py", "new")
        assert finding["line"] in (None, 1, 2)
        assert finding["severity"] in {"critical", "major", "minor", "trivial"}
        assert 0 < finding["confidence"] <= 1  # vLLM's log-probabilities of the rating
        assert finding["explanation"]
    assert_answered_by_the_server(result, before, demo_server)


def migrated_sqlite(path: Path) -> sa.Engine:
    """A database of the test's own: SQLite only, as the PostgreSQL path of the same flow is
    covered with the tiny student (tests/review/test_review_flow.py) and each variant costs a review."""
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    return engine


def test_a_gitlab_webhook_is_reviewed_by_the_demo_student(
    demo_server: VLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = migrated_sqlite(tmp_path / "reviewbot.db")
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    alice = fake.add_user("alice", "alice-token")
    project = fake.add_project("group/app")
    monkeypatch.setenv("REVIEWBOT_TOKEN_GITLAB", "bot-token")
    settings = settings_with_key(
        student_base_url=demo_server.base_url,
        student_model=demo_server.model,
        queue_url=f"sqlite:///{tmp_path}/q.db",
    )
    queue = Queue(settings, engine, retry_delay_s=0)
    mr = fake.add_merge_request(project, [change("db.py", BASE, FEATURE)], author=alice)
    before = served(demo_server)
    with live_server(fake.app) as url:
        with session_scope(engine) as session:
            session.add(
                project_row(
                    SECRET, forge="gitlab", forge_url=url, path="group/app",
                    token_env="REVIEWBOT_TOKEN_GITLAB", bot_username="reviewbot",
                    severity_threshold="trivial",
                )
            )  # fmt: skip
        with TestClient(create_app(engine, queue, settings)) as client:
            review_id = deliver(client, mr, "open")
            run_jobs(queue)
    with Session(engine) as session:
        done = session.get(Review, review_id)
        findings = session.exec(select(Finding).where(Finding.review_id == review_id)).all()
    engine.dispose()
    assert done is not None
    assert done.status == ReviewStatus.DONE, done.error
    assert findings, "the demo student found nothing; the flow would prove little"
    notes = bot_notes(mr)
    assert [kind for kind, _ in notes].count("summary") == 1
    posted = {str(note.id) for kind, note in notes if kind == "finding"}
    assert posted == {f.forge_comment_id for f in findings}
    requests, _ = served(demo_server)
    assert requests - before[0] >= 1 + len(findings)  # a find call, and a rating of each finding at least


def test_a_lora_adapter_trained_on_it_is_hot_loaded_and_reviews(
    demo_student: DemoStudent, demo_server: VLLMServer, feature_repo: Path, tmp_path: Path
) -> None:
    # The trainer's own LoRA fine-tuning, a few steps on severity questions (not to teach it: to
    # show that an adapter of this model trains, loads and answers).
    chats = [
        (conversation("rate", code=row["question"]["code"], review=row["question"]["review"]),
         json.dumps(row["answer"], separators=(",", ":")))
        for row in make_examples(8, seed=0)
    ]  # fmt: skip
    config = FinetuneConfig(rank=LORA_RANK, alpha=2 * LORA_RANK, dropout=0.0, epochs=1.0, batch_size=4)
    trained = finetune(demo_student.path, chats, tmp_path / "severity-v1", config, show_progress=False)
    _timings["LoRA fine-tuning of the demo student (8 examples, rank 8, 2 steps)"] = trained.seconds
    adapter = trained.adapter_dir

    # The registry loads it into the running server (POST /v1/load_lora_adapter) and records it;
    # promoted, it answers every severity call of the next review.
    home = tmp_path / "home"
    home.mkdir()
    engine = migrated_sqlite(home / "reviewbot.db")
    settings = load_settings(student_base_url=demo_server.base_url, student_model=demo_server.model)

    async def register() -> None:
        async with LLMClient.student(settings) as student:
            with Session(engine) as session:
                await registry.register(
                    session, student, Task.SEVERITY, adapter, str(demo_student.path), max_rank=2 * LORA_RANK
                )

    asyncio.run(register())
    with Session(engine) as session:
        registry.promote(session, adapter.name, force=True)
    engine.dispose()
    models = httpx.get(f"{demo_server.base_url}/models", timeout=10).json()["data"]
    assert {"id": adapter.name, "parent": demo_server.model}.items() <= next(
        m for m in models if m["id"] == adapter.name
    ).items()

    before = served(demo_server)
    started = time.monotonic()
    result = review(feature_repo, demo_server, home)  # the data folder's database, where the adapter is
    _timings["review with the demo student's LoRA adapter"] = time.monotonic() - started
    assert result["stats"]["models"]["severity"] == adapter.name
    assert result["stats"]["stages"]["severity"]["calls"] >= 1, (
        "no finding was rated: the adapter was never asked"
    )
    assert result["failed"] == []
    assert_answered_by_the_server(result, before, demo_server)
