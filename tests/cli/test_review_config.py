"""``reviewbot review`` reads the repository's settings file at the base ref (never the head's copy),
applies it with the defaults, says on stderr which file it used or what was wrong with it, and
reports it in its JSON output. A scripted student answers, so the prompts it was sent can be read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bot.repo_config import effective
from tests.support.gitrepo import commit, git, init_repo
from tests.support.scripted_server import Script, completion, scripted_server

SOURCE = "".join(f"value_{n} = {n}\n" for n in range(1, 21))
BASE_CONFIG = (
    'threshold = "critical"\n'
    'review = ["app.py"]\n'
    "[[instructions]]\n"
    'paths = ["app.py"]\n'
    'text = "Public API: flag breaking changes."\n'
)
HEAD_CONFIG = 'threshold = "trivial"\n'
NOTHING = completion(json.dumps({"issues": []}))


def repository(tmp_path: Path, base_config: str) -> Path:
    """``main`` holds ``base_config``; ``feature`` changes two files and the settings file too."""
    repo = init_repo(
        tmp_path / "repo", {"app.py": SOURCE, "other.py": SOURCE, ".reviewbot.toml": base_config}
    )
    git(repo, "checkout", "-q", "-b", "feature")
    edited = SOURCE.replace("value_4 = 4\n", "value_4 = eval(data)\n")
    commit(repo, {"app.py": edited, "other.py": edited, ".reviewbot.toml": HEAD_CONFIG}, "feature")
    return repo


def review(repo: Path, script: Script, *args: str) -> subprocess.CompletedProcess[str]:
    with scripted_server(script) as url:
        env = {**os.environ, "REVIEWBOT_STUDENT_BASE_URL": url, "REVIEWBOT_STUDENT_MODEL": "scripted"}
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "review", "--repo", str(repo), "--base", "main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )


def test_the_file_at_the_base_ref_is_applied(tmp_path: Path) -> None:
    script = Script([], default=NOTHING)
    done = review(repository(tmp_path, BASE_CONFIG), script, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "reviewbot: settings: .reviewbot.toml at main" in done.stderr
    out = json.loads(done.stdout)
    expected = effective(None, (".reviewbot.toml", BASE_CONFIG))
    assert out["settings"] == {"source": ".reviewbot.toml", "problem": None, "digest": expected.digest}
    assert out["stats"]["threshold"] == "critical"  # the base's, not the head's "trivial"
    skipped = {s["path"]: s["reason"] for s in out["skipped"]}
    assert skipped["other.py"] == "not in the repository file's review globs"
    (find,) = [r["messages"][1]["content"] for r in script.requests if "messages" in r]
    assert "```path\napp.py\n```" in find
    assert "```instructions\nPublic API: flag breaking changes.\n```" in find


def test_the_threshold_option_wins_over_the_file(tmp_path: Path) -> None:
    done = review(repository(tmp_path, BASE_CONFIG), Script([], default=NOTHING), "--format", "json",
                  "--threshold", "major")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["threshold"] == "major"


def test_a_broken_file_is_reported_and_the_defaults_apply(tmp_path: Path) -> None:
    broken = 'threshold = "critical"\nreveiw = ["app.py"]\n'
    done = review(repository(tmp_path, broken), Script([], default=NOTHING), "--format", "json")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "not used" in line]
    assert line.startswith("reviewbot: the repository's settings file was not used (defaults apply): ")
    assert ".reviewbot.toml:2: reveiw: unknown key" in line
    out = json.loads(done.stdout)
    assert out["settings"]["source"] is None
    assert out["settings"]["problem"].startswith(".reviewbot.toml:2: reveiw")
    assert out["stats"]["threshold"] == "minor"
    assert {s["path"] for s in out["skipped"]} == set()  # every file reviewed


def test_no_file_no_line(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"app.py": SOURCE})
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"app.py": SOURCE + "extra = 1\n"}, "feature")
    done = review(repo, Script([], default=NOTHING), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "settings" not in done.stderr
    assert json.loads(done.stdout)["settings"]["source"] is None
