"""A non-editable install (the built wheel) carries the prompt templates and the migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_prompts_and_migrations_and_they_work(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("reviewbot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "prompts/rate.j2",
        "prompts/answers.py",
        "bot/migrations/env.py",
        "bot/migrations/script.py.mako",
        "bot/console/templates/base.html",  # the console's pages and its one script
        "bot/console/static/console.js",
        "flywheel/templates/flywheel_models.html",  # the trainer's pages
    } <= names
    assert any(n.startswith("bot/migrations/versions/0001_") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
    )
    # Run from an unrelated folder with only the installed copy (and the dependencies) importable.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import bot, prompts, bot.db as db;"
        f"assert bot.__file__.startswith({str(site)!r}), bot.__file__;"
        "print(prompts.render('rate', code='x', review='y').count('Review:'));"
        "print(db.upgrade(db.make_engine('sqlite:///installed.db')))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=elsewhere, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1", f"(None, '{db_head()}')"]


def db_head() -> str:
    from bot.db import head_revision

    return head_revision()
