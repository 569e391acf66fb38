"""The flywheel end to end on CPU: the teacher double, the real vLLM server with the tiny student,
real LoRA fine-tuning. The student starts at about chance on a task it was never taught (a review's
first word decides its severity) and must reach 0.8 on the held-out set within three rounds; each
adapter is hot-loaded into vLLM under a new name, the best is promoted (the ``--heldout`` file is the
golden set too, and it does not regress there), and reviews then use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from bot import db
from bot.models import FlywheelRun, ModelStatus, ModelVersion, RunStatus
from flywheel import data
from flywheel.evaluate import GRADE_OVERHEAD
from flywheel.exam import EXAM_OVERHEAD, parts
from flywheel.spec import spec_for
from tests.conftest import _timings
from tests.flywheel.test_finetune import TINY_FINETUNE  # what makes the tiny student learn in a round
from tests.support.gitrepo import commit, git, init_repo
from tests.support.severity_task import make_examples
from tests.support.teacher_server import MODEL, Teacher, teacher_server
from tests.support.tiny_model import TinyStudent
from tests.support.vllm_server import VLLMServer


def reviewbot(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env={**os.environ, **env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def flywheel_env(
    tmp_path: Path, server: VLLMServer, student: TinyStudent, teacher_url: str
) -> dict[str, str]:
    return {
        "REVIEWBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'reviewbot.db'}",
        "REVIEWBOT_STUDENT_BASE_URL": server.base_url,
        "REVIEWBOT_STUDENT_MODEL": server.model,
        "REVIEWBOT_STUDENT_WEIGHTS": str(student.path),
        "REVIEWBOT_TEACHER_BASE_URL": teacher_url,
        "REVIEWBOT_TEACHER_MODEL": MODEL,
        "REVIEWBOT_FLYWHEEL_DIR": str(tmp_path / "flywheel"),
        "REVIEWBOT_MAX_LORA_RANK": "16",  # as the test server was started
        "REVIEWBOT_FINETUNE": json.dumps(TINY_FINETUNE),
        "REVIEWBOT_FLYWHEEL_EXAM_SIZE": "24",
        "REVIEWBOT_FLYWHEEL_NEW_EXAMPLES": "96",
        "REVIEWBOT_PROMOTION_MARGIN": "0.05",
        "REVIEWBOT_PROMOTION_MIN_ITEMS": "10",  # the test part of 48 held-out examples; 200 by default
        "REVIEWBOT_LLM_CONCURRENCY": "32",
        "REVIEWBOT_FLYWHEEL_MAX_SYNTHETIC_SHARE": "1",  # no reviewers' training data: the teacher's alone
        # The winner takes all traffic at once: a local review has no merge request to draw a canary
        # side by (the canary: tests/feedback/test_canary.py).
        "REVIEWBOT_CANARY_SHARE": "0",
    }


def heldout_file(folder: Path, examples: list[dict[str, Any]]) -> Path:
    path = folder / "heldout.jsonl"
    data.write_jsonl(path, [data.parse_example(spec_for("severity"), e, "test") for e in examples])
    return path


@pytest.mark.vllm
def test_the_flywheel_teaches_the_student(
    vllm_server: VLLMServer, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    heldout = heldout_file(tmp_path, make_examples(48, seed=100))
    teacher = Teacher()
    started = time.monotonic()
    with teacher_server(teacher) as teacher_url:
        env = flywheel_env(tmp_path, vllm_server, tiny_student, teacher_url)
        assert reviewbot(env, "db", "upgrade", cwd=tmp_path).returncode == 0
        result = reviewbot(
            env,
            "flywheel",
            "run",
            "--task",
            "severity",
            "--rounds",
            "3",
            "--heldout",
            str(heldout),
            cwd=tmp_path,
        )
    _timings["flywheel run, 3 rounds (tiny student, CPU)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 3:" in result.stdout
    assert "promoted severity-v" in result.stdout

    engine = db.make_engine(env["REVIEWBOT_DATABASE_URL"])
    with Session(engine) as session:
        run = session.exec(select(FlywheelRun)).one()
        versions = session.exec(select(ModelVersion).order_by(ModelVersion.id)).all()
    scores = [r["heldout"] for r in run.rounds]
    assert run.status == RunStatus.DONE
    assert scores[0] <= 0.45, f"held-out score per round: {scores}"  # about chance: 4 balanced classes
    assert max(scores[1:]) >= 0.8, f"held-out score per round: {scores}"
    assert [v.adapter_name for v in versions] == ["severity-v1", "severity-v2", "severity-v3"]
    assert all(r["teacher_score"] for r in run.rounds[1:])
    [active] = [v for v in versions if v.status == ModelStatus.ACTIVE]
    served = {m["id"] for m in httpx.get(f"{vllm_server.base_url}/models").json()["data"]}
    assert active.adapter_name in served  # hot-loaded, and serving
    assert not {v.adapter_name for v in versions if v is not active} & served  # rejected: unloaded at the end
    assert active.metrics["heldout"] == max(scores[1:])
    # The --heldout file is golden set v1: every round scored on it through vLLM, the promoted one recorded.
    assert [r["golden_version"] for r in run.rounds] == [1, 1, 1, 1]
    # The same examples as the held-out set here, whose dev part scores the rounds: the best is good on both.
    assert active.metrics["golden"] >= 0.75, [r["golden"] for r in run.rounds]
    assert active.metrics["golden_version"] == 1
    assert (active.metrics["test"]["passed"], active.metrics["test"]["items"]) == (True, 28)
    assert "golden set v1" in (run.outcome or "")
    # Three rounds, each exam (24) and batch of new examples (96) asked for in parts of at most 8192 tokens.
    assert teacher.calls["exam"] == 3 * len(parts(24, 8192, EXAM_OVERHEAD)) == 6
    assert teacher.calls["grade"] == 3 * len(parts(96, 8192, GRADE_OVERHEAD)) == 18

    # The review pipeline now rates with the promoted adapter.
    repo = init_repo(tmp_path / "app", {"app.py": "def f(x):\n    return x\n"})
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"app.py": "def f(x):\n    value_3 = compute(x)\n    return eval(value_3)\n"}, "feature")
    review = reviewbot(env, "review", "--repo", str(repo), "--base", "main", "--format", "json", cwd=tmp_path)
    assert review.returncode == 0, review.stderr
    stats: dict[str, Any] = json.loads(review.stdout)["stats"]
    assert stats["models"]["severity"] == active.adapter_name
    if stats["candidates"]:  # the tiny model's find step decides whether there is anything to rate
        assert stats["stages"]["severity"]["calls"] >= 1
        assert stats["stages"]["severity"]["failed"] == 0

    status = reviewbot(env, "flywheel", "status", cwd=tmp_path)
    assert status.returncode == 0
    assert "promoted" in status.stdout
    report = reviewbot(
        env, "flywheel", "report", str(run.id), "--out", str(tmp_path / "run.png"), cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    listing = reviewbot(env, "models", "list", "--format", "json", cwd=tmp_path)
    assert [v["status"] for v in json.loads(listing.stdout)].count("active") == 1
    golden_sets = reviewbot(env, "flywheel", "golden", "list", "--format", "json", cwd=tmp_path)
    assert [(g["version"], g["size"]) for g in json.loads(golden_sets.stdout)] == [(1, 48)]


@pytest.mark.vllm
def test_an_adapter_vllm_refuses_fails_the_run(
    vllm_server: VLLMServer, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    heldout = heldout_file(tmp_path, make_examples(8, seed=3))
    with teacher_server(Teacher()) as teacher_url:
        env = {
            **flywheel_env(tmp_path, vllm_server, tiny_student, teacher_url),
            # The server takes rank 16 at most; this configuration claims 32 is fine.
            "REVIEWBOT_MAX_LORA_RANK": "32",
            "REVIEWBOT_FINETUNE": json.dumps({**TINY_FINETUNE, "rank": 32, "epochs": 1}),
            "REVIEWBOT_FLYWHEEL_NEW_EXAMPLES": "8",
        }
        assert reviewbot(env, "db", "upgrade", cwd=tmp_path).returncode == 0
        result = reviewbot(env, "flywheel", "run", "--rounds", "1", "--heldout", str(heldout), cwd=tmp_path)
    assert result.returncode == 1
    assert "refused adapter 'severity-v1'" in result.stderr
    engine = db.make_engine(env["REVIEWBOT_DATABASE_URL"])
    with Session(engine) as session:
        run = session.exec(select(FlywheelRun)).one()
        assert run.status == RunStatus.FAILED
        assert "refused adapter" in (run.error or "")
        assert session.exec(select(ModelVersion)).all() == []
