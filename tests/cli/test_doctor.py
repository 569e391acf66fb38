"""``reviewbot doctor``: every line passes on a working setup, and each broken part fails its own line
with the fix (exit 1). The student is a scripted OpenAI-compatible server (vLLM's ``/v1/models``
with its ``max_model_len``); the service answering ``/healthz`` is the real API app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from bot import db
from bot.api import create_app
from bot.config import load_settings
from bot.forges.gitlab import GitLabForge, GitLabGroup
from bot.models import ModelStatus, ModelVersion, Project, Source, SourceKind
from bot.queue.schedule import Scheduler
from tests.support.fake_gitlab import FakeGitLab
from tests.support.live_server import live_server
from tests.support.scripted_server import Reply, Script, completion, scripted_server

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class _NoJobs:
    def wake(self) -> None:
        pass


def doctor(env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "doctor", "--format", "json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    answer = json.loads(result.stdout)
    assert answer["healthy"] is (result.returncode == 0), result.stderr
    return result.returncode, {row["check"]: row for row in answer["checks"]}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A migrated SQLite database with a live consumer heartbeat, a student serving MODEL with an 8k
    context, and the API answering on the public URL."""
    database_url = f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}"
    (tmp_path / "home").mkdir(exist_ok=True)
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    Scheduler(engine, []).beat()
    script = Script([], default=completion("{}"), model=MODEL, max_model_len=8192)
    settings = load_settings()
    with scripted_server(script) as student, live_server(create_app(engine, _NoJobs(), settings)) as public:
        yield {
            "REVIEWBOT_STUDENT_BASE_URL": student,
            "REVIEWBOT_STUDENT_MODEL": MODEL,
            "REVIEWBOT_PUBLIC_URL": public,
        }
    engine.dispose()


def test_a_working_setup_passes_every_check(setup: dict[str, str]) -> None:
    code, checks = doctor(setup)
    assert code == 0, checks
    assert {name: row["state"] for name, row in checks.items()} == {
        "configuration": "ok", "database": "ok", "queue": "ok", "student model": "ok",
        "teacher model": "skip", "public URL": "ok",
    }  # fmt: skip
    assert "context 8192 tokens" in checks["student model"]["detail"]
    assert "loopback" in checks["public URL"]["detail"]  # passes, but says a forge cannot reach it


def test_a_stopped_student_fails_with_the_fix(setup: dict[str, str]) -> None:
    code, checks = doctor({**setup, "REVIEWBOT_STUDENT_BASE_URL": "http://127.0.0.1:9/v1"})
    assert code == 1
    assert checks["student model"]["state"] == "fail"
    assert "unreachable" in checks["student model"]["detail"]
    assert "deploy/run.sh" in checks["student model"]["fix"]
    assert checks["database"]["state"] == "ok"


def test_a_wrong_served_name_and_a_short_context_fail(setup: dict[str, str]) -> None:
    code, checks = doctor({**setup, "REVIEWBOT_STUDENT_MODEL": "meta-llama/Meta-Llama-3-8B-Instruct"})
    assert code == 1
    assert MODEL in checks["student model"]["detail"]
    assert "REVIEWBOT_STUDENT_MODEL" in checks["student model"]["fix"]
    code, checks = doctor({**setup, "REVIEWBOT_REVIEW_CHUNK_TOKENS": "8000"})
    assert code == 1
    assert "context is 8192 tokens" in checks["student model"]["detail"]
    assert "--max-model-len" in checks["student model"]["fix"]


def test_an_active_adapter_the_server_lacks_and_cannot_load_fails(
    setup: dict[str, str], tmp_path: Path
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with Session(engine) as session:
        session.add(
            ModelVersion(
                task="severity",
                adapter_name="severity-v3",
                path="/x",
                base_model=MODEL,
                status=ModelStatus.ACTIVE,
            )
        )
        session.commit()
    # Like vLLM asked to load an adapter from a folder it cannot read (doctor tries, as a review does).
    refusing = Script(
        [], default=Reply(400, {"message": "No adapter found for /x"}), model=MODEL, max_model_len=8192
    )
    with scripted_server(refusing) as student:
        code, checks = doctor({**setup, "REVIEWBOT_STUDENT_BASE_URL": student})
    assert code == 1
    assert "severity-v3" in checks["student model"]["detail"]
    assert "cannot load the adapters in use" in checks["student model"]["detail"]
    assert refusing.requests[-1]["path"] == "/v1/load_lora_adapter"


def test_an_active_adapter_the_server_lacks_is_loaded(setup: dict[str, str], tmp_path: Path) -> None:
    """A restarted server, or a replica whose resolver has not loaded it yet, gets it loaded."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with Session(engine) as session:
        session.add(ModelVersion(task="severity", adapter_name="severity-v3", path="/x", base_model=MODEL,
                                 status=ModelStatus.ACTIVE))  # fmt: skip
        session.commit()
    code, checks = doctor(setup)
    assert code == 0, checks
    assert checks["student model"]["state"] == "ok"


def test_no_consumer_a_behind_database_and_no_service_fail(setup: dict[str, str], tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM lease"))
    code, checks = doctor({**setup, "REVIEWBOT_PUBLIC_URL": "http://127.0.0.1:9"})
    assert code == 1
    assert checks["queue"]["state"] == "fail"
    assert "reviewbot serve" in checks["queue"]["fix"]
    assert checks["public URL"]["state"] == "fail"
    code, checks = doctor({**setup, "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    assert checks["database"]["state"] == "fail"
    assert checks["database"]["fix"] == "reviewbot db upgrade"
    assert checks["queue"]["state"] == "skip"


def test_a_project_without_its_token_fails(setup: dict[str, str], tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with Session(engine) as session:
        session.add(
            Project(forge="gitlab", forge_url="https://gitlab.example", path="g/\x1b[31mapp",
                    webhook_secret="x", webhook_key="k1", token_env="REVIEWBOT_TOKEN_APP")
        )  # fmt: skip
        session.commit()
    code, checks = doctor(setup)
    assert code == 1
    token = checks["gitlab g/\x1b[31mapp: token"]
    assert token["state"] == "fail"
    assert "REVIEWBOT_TOKEN_APP" in token["fix"]


def test_a_projects_token_and_webhook_are_read_from_the_forge(setup: dict[str, str], tmp_path: Path) -> None:
    """Through the forge's API: a token lacking its scope fails its line; with it, the webhook's
    absence fails the next one, with the command that creates it; once created, both pass."""
    fake = FakeGitLab()
    bot = fake.add_user("reviewbot", "reviewbot-token", scopes=("read_api",))
    fake.add_member(fake.add_project("team/app"), bot, 40)  # maintainer: the test creates the hook
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with live_server(fake.app) as url:
        with Session(engine) as session:
            session.add(
                Project(forge="gitlab", forge_url=url, path="team/app", webhook_secret="x", webhook_key="k3y",
                        token_env="REVIEWBOT_TOKEN_APP")
            )  # fmt: skip
            session.commit()
        env = {**setup, "REVIEWBOT_TOKEN_APP": "reviewbot-token"}
        code, checks = doctor(env)
        assert code == 1
        assert "api scope" in checks["gitlab team/app: token"]["detail"]
        bot.scopes = ["api"]
        code, checks = doctor(env)
        assert checks["gitlab team/app: token"]["state"] == "ok"
        assert checks["gitlab team/app: webhook"]["state"] == "fail"
        assert "reviewbot project hook team/app" in checks["gitlab team/app: webhook"]["fix"]
        hook = f"{setup['REVIEWBOT_PUBLIC_URL']}/webhooks/gitlab/k3y"
        GitLabForge(url, "reviewbot-token", "team/app").ensure_webhook(hook, "s3cret")
        code, checks = doctor(env)
        assert checks["gitlab team/app: webhook"]["state"] == "ok"
        assert checks["gitlab team/app: deliveries"]["state"] == "warn"  # no review yet: worth a look
        assert code == 0


def test_a_groups_token_and_group_webhook_are_checked(setup: dict[str, str], tmp_path: Path) -> None:
    """A GitLab group source: its token on the group, and the group's own webhook; the projects it
    added are served by that hook, so no project webhook is asked of them."""
    fake = FakeGitLab()
    bot = fake.add_user("reviewbot", "reviewbot-token")
    fake.add_member(fake.add_group("team"), bot, 50)
    fake.add_member(fake.add_project("team/app"), bot, 30, inherited=True)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'home' / 'reviewbot.db'}")
    with live_server(fake.app) as url, Session(engine) as session:
        source = Source(
            kind=SourceKind.GITLAB_GROUP, forge="gitlab", forge_url=url, name="team", webhook_secret="x",
            webhook_key="gr0up", token_env="REVIEWBOT_TOKEN_TEAM",
        )  # fmt: skip
        session.add(source)
        session.commit()
        session.add(
            Project(forge="gitlab", forge_url=url, path="team/app", webhook_secret="x", webhook_key="k4",
                    token_env="REVIEWBOT_TOKEN_TEAM", source_id=source.id)
        )  # fmt: skip
        session.commit()
        env = {**setup, "REVIEWBOT_TOKEN_TEAM": "reviewbot-token"}
        code, checks = doctor(env)
        assert code == 1
        assert checks["gitlab group team: token"]["state"] == "ok"
        assert checks["gitlab group team: webhook"]["state"] == "fail"
        assert checks["gitlab team/app: token"]["state"] == "ok"
        assert "gitlab team/app: webhook" not in checks
        hook = f"{setup['REVIEWBOT_PUBLIC_URL']}/webhooks/gitlab/gr0up"
        GitLabGroup(url, "reviewbot-token", "team").ensure_webhook(hook, "s3cret")
        code, checks = doctor(env)
        assert checks["gitlab group team: webhook"]["state"] == "ok"
        assert code == 0
