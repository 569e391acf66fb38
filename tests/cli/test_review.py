"""``reviewbot review`` end to end: a temporary git repository, the real vLLM tiny student.

The tiny model's words are nonsense; the structure of the result must hold regardless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header, Response

from bot.diff import parse_diff
from bot.models import Severity
from bot.review.localgit import diff_range
from tests.support.gitrepo import commit, git, init_repo
from tests.support.live_server import live_server
from tests.support.vllm_server import VLLMServer, free_port

SOURCE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(40))
HUGE = "".join(f"value_{i} = compute({i}, cache={i % 7})\n" for i in range(500))


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(tmp_path_factory.mktemp("repo") / "app", {"app.py": SOURCE, "README.md": "hello\n"})
    git(repo, "checkout", "-q", "-b", "feature")
    edited = SOURCE.replace("return x + 3\n", "return eval(x) + 3\n").replace(
        "return x + 30\n", "open(x).read()\n    return x + 30\n"
    )
    commit(
        repo,
        {
            "app.py": edited,
            "generated_table.py": HUGE,
            "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
            "poetry.lock": "[[package]]\nname = 'x'\n",
        },
        "feature",
    )
    return repo


def run_review(
    repo: Path, server_url: str, *args: str, chunk_tokens: int = 600
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REVIEWBOT_STUDENT_BASE_URL": server_url,
        "REVIEWBOT_STUDENT_MODEL": "tiny-student",
        "REVIEWBOT_REVIEW_CHUNK_TOKENS": str(chunk_tokens),
        "REVIEWBOT_LLM_CONCURRENCY": "32",
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "review", "--repo", str(repo), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=repo.parent,
        timeout=600,
    )


@pytest.fixture(scope="module")
def reviewed(feature_repo: Path, vllm_server: VLLMServer) -> dict[str, Any]:
    result = run_review(
        feature_repo, vllm_server.base_url, "--base", "main", "--format", "json", "--threshold", "trivial"
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.vllm
def test_json_has_the_documented_shape(reviewed: dict[str, Any]) -> None:
    assert set(reviewed) == {"findings", "skipped", "failed", "stopped", "stats", "settings"}
    assert reviewed["settings"]["source"] is None  # the repository has no settings file
    assert reviewed["stopped"] is None or "limit" in reviewed["stopped"] or "deadline" in reviewed["stopped"]
    keys = {"path", "line", "side", "severity", "confidence", "title", "review", "explanation"}
    for finding in reviewed["findings"]:
        assert set(finding) == keys
        assert finding["severity"] in {s.value for s in Severity}
        assert finding["side"] in {"new", "old"}
    assert reviewed["failed"] == []
    assert reviewed["stats"]["stages"]["find"]["calls"] == reviewed["stats"]["chunks"]


@pytest.mark.vllm
def test_every_finding_is_on_a_line_of_the_diff(reviewed: dict[str, Any], feature_repo: Path) -> None:
    diff = parse_diff(diff_range(feature_repo, "main", "HEAD"))
    files = {f.path: f for f in diff.files}
    assert reviewed["findings"], "the tiny model found nothing at all; the test would prove little"
    for finding in reviewed["findings"]:
        if finding["line"] is None:
            continue  # file-level finding
        assert files[finding["path"]].line(finding["side"], finding["line"]) is not None, finding


@pytest.mark.vllm
def test_huge_file_is_split_and_fully_covered(reviewed: dict[str, Any]) -> None:
    stats = reviewed["stats"]
    assert stats["files"] == 2  # app.py and generated_table.py
    assert stats["chunks"] > 5  # 500 added lines (about 5,800 tokens) at 600 tokens a chunk
    assert stats["changed_lines_reviewed"] == stats["changed_lines"] >= 500 + 3


@pytest.mark.vllm
def test_binary_and_lock_files_are_skipped_with_a_reason(reviewed: dict[str, Any]) -> None:
    skipped = {s["path"]: s["reason"] for s in reviewed["skipped"]}
    assert "binary" in skipped["logo.png"]
    assert "poetry.lock" in skipped
    assert "ignored" in skipped["poetry.lock"]


@pytest.mark.vllm
def test_threshold_filters_and_fail_on_sets_the_exit_code(
    feature_repo: Path, vllm_server: VLLMServer, reviewed: dict[str, Any]
) -> None:
    result = run_review(
        feature_repo, vllm_server.base_url, "--format", "json", "--threshold", "major", "--fail-on", "trivial"
    )
    data = json.loads(result.stdout)
    assert all(f["severity"] in {"major", "critical"} for f in data["findings"])
    if any(f["severity"] in {"minor", "trivial"} for f in reviewed["findings"]):
        assert data["stats"]["below_threshold"] > 0
    assert (
        data["stats"]["below_threshold"] + len(data["findings"]) + data["stats"]["merged"]
        == data["stats"]["candidates"]
    )
    assert result.returncode == (1 if data["findings"] else 0)


@pytest.mark.vllm
def test_text_and_markdown_output(feature_repo: Path, vllm_server: VLLMServer) -> None:
    text = run_review(feature_repo, vllm_server.base_url, "--threshold", "trivial", chunk_tokens=2500)
    assert text.returncode == 0, text.stderr
    assert "app.py" in text.stdout
    assert "skipped" in text.stdout
    assert "logo.png" in text.stdout
    markdown = run_review(feature_repo, vllm_server.base_url, "--format", "markdown", chunk_tokens=2500)
    assert markdown.returncode == 0
    assert markdown.stdout.startswith("## Review")


def test_unreachable_model_server_is_one_line_and_exit_2(feature_repo: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_review(feature_repo, url, "--format", "json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert url in result.stderr
    assert "unreachable" in result.stderr


def test_bad_ref_is_exit_2(feature_repo: Path) -> None:
    result = run_review(feature_repo, "http://127.0.0.1:1/v1", "--base", "no-such-branch")
    assert result.returncode == 2
    assert "no-such-branch" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_ref_names_the_unknown_revision(feature_repo: Path) -> None:
    result = run_review(feature_repo, "http://127.0.0.1:1/v1", "--base", "no-such-branch")
    assert result.returncode == 2
    assert "unknown revision no-such-branch" in result.stderr
    assert "usage" not in result.stderr


@pytest.mark.parametrize("option", ["--base", "--head"])
def test_a_ref_spelled_like_an_option_is_never_one(feature_repo: Path, tmp_path: Path, option: str) -> None:
    written = tmp_path / "written-by-git"
    result = run_review(feature_repo, "http://127.0.0.1:1/v1", option, f"--output={written}")
    assert result.returncode == 2
    assert f"unknown revision --output={written}" in result.stderr
    assert not written.exists()


def _recording_app(hits: list[str]) -> FastAPI:
    """A model server that only notes who called it (and fails every call)."""
    app = FastAPI()

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST"])
    def anything(rest: str, authorization: str = Header("")) -> Response:
        hits.append(f"{rest} {authorization}")
        return Response(status_code=400)

    return app


def test_a_checkouts_dotenv_is_not_read_unless_asked_for(feature_repo: Path) -> None:
    """CI runs `reviewbot review` in a pull request's checkout: its .env must not choose the model server
    (which would receive the API key); only --env-file or REVIEWBOT_ENV_FILE reads one."""
    hits: list[str] = []
    dotenv = feature_repo.parent / ".env"
    command = [sys.executable, "-m", "bot.cli", "review", "--repo", str(feature_repo), "--base", "main"]
    env = {**os.environ, "REVIEWBOT_STUDENT_API_KEY": "the-api-key", "REVIEWBOT_LLM_MAX_RETRIES": "0"}
    with live_server(_recording_app(hits)) as decoy:
        dotenv.write_text(f"REVIEWBOT_STUDENT_BASE_URL={decoy}/v1\n")
        try:
            unasked = subprocess.run(command, env=env, capture_output=True, text=True, cwd=dotenv.parent)
            assert hits == [], "a .env nobody asked for was read"
            asked = subprocess.run(
                command, env={**env, "REVIEWBOT_ENV_FILE": str(dotenv)}, capture_output=True, text=True,
                cwd=dotenv.parent,
            )  # fmt: skip
        finally:
            dotenv.unlink()
    assert unasked.returncode == 2
    assert decoy not in unasked.stderr
    assert asked.returncode == 2
    assert hits, asked.stderr
    assert all("the-api-key" in hit for hit in hits)
