"""The console's verdicts page and ``/api/v1/verdicts``: acceptance rows (``reviewbot feedback stats``),
each model version's severity confusion matrix (``reviewbot feedback confusion``) counted from
reviewers' trusted commands, and the acceptance chart inline as CSP-safe SVG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlmodel import Session

from bot.events import UP, SignalKind
from bot.feedback.plot import acceptance_svg
from bot.feedback.signals import record_signal
from bot.feedback.stats import acceptance, severity_confusion
from bot.models import Finding, Project, Review
from tests.support.console import Admin, bearer, console_client, sign_in
from tests.support.db import session_scope

HOSTILE = "<script>alert(1)</script>"
ZERO = {"critical": 0, "major": 0, "minor": 0, "trivial": 0, "dismissed": 0}


@dataclass
class World:
    app: int  # project ids
    other: int


def finding(session: Session, review: Review, severity: str, model: str) -> int:
    row = Finding(review_id=review.id, path="a.py", line=1, severity=severity, title="t", review="r",
                  fingerprint=f"{model}-{severity}", model_version=model)  # fmt: skip
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def seed(engine: sa.Engine) -> World:
    """Two model versions' findings on ``g/app`` with reviewers' signals, one finding elsewhere."""
    with session_scope(engine) as session:
        where = {"forge": "gitlab", "forge_url": "http://gitlab.test", "webhook_secret": "s"}
        app, other = Project(path="g/app", **where), Project(path=f"g/{HOSTILE}", **where)
        session.add_all([app, other])
        session.flush()
        review = Review(project_id=app.id, mr_number=1, head_sha="a" * 40, mr_author="author")
        elsewhere = Review(project_id=other.id, mr_number=2, head_sha="b" * 40)
        session.add_all([review, elsewhere])
        session.flush()
        signals = [  # (model's severity, model version, [(kind, value, author, role)])
            ("major", "severity-v1", [(SignalKind.SEVERITY, "major", "ana", "developer")]),  # agreed
            ("major", "severity-v1", [(SignalKind.SEVERITY, "minor", "ana", "developer")]),  # over-rated
            ("minor", "severity-v1", [(SignalKind.SEVERITY, "critical", "mo", "maintainer")]),  # under-rated
            ("critical", "severity-v1", [(SignalKind.DISMISS, "fine", HOSTILE, "developer")]),  # dismissed
            ("major", "severity-v1", [(SignalKind.SEVERITY, "trivial", "gus", "guest")]),  # untrusted
            ("major", "severity-v1", [(SignalKind.SEVERITY, "minor", "author", "owner")]),  # the MR's author
            ("major", "severity-v1", [(SignalKind.SEVERITY, "minor", "ana", "developer"),
                                      (SignalKind.SEVERITY, "critical", "bo", "developer")]),  # disputed
            ("minor", "severity-v1", [(SignalKind.REACTION, UP, "ana", "developer")]),  # 👍: no verdict
            ("trivial", "severity-v2", [(SignalKind.SEVERITY, "trivial", "ana", "developer")]),  # agreed
        ]  # fmt: skip
        for index, (severity, model, said) in enumerate(signals):
            finding_id = finding(session, review, severity, model)
            for n, (kind, value, author, role) in enumerate(said):
                record_signal(session, finding_id, kind, value, author, f"s{index}-{n}", role=role)
        finding(session, elsewhere, "major", "severity-v1")
        assert app.id
        assert other.id
        return World(app.id, other.id)


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    with console_client(engine) as client:
        yield client


@pytest.fixture
def admin(client: TestClient) -> Admin:
    return sign_in(client)


def test_the_confusion_matrix_counts_trusted_verdicts(engine: sa.Engine) -> None:
    seed(engine)
    first, second = severity_confusion(engine)
    assert first.model_version == "severity-v1"
    assert first.counts == {
        "critical": {**ZERO, "dismissed": 1},
        "major": {**ZERO, "major": 1, "minor": 1},
        "minor": {**ZERO, "critical": 1},
        "trivial": ZERO,
    }
    assert (first.judged, first.agreed, first.over_rated, first.under_rated) == (4, 1, 1, 1)
    assert (first.dismissed, first.disputed) == (1, 1)
    assert first.words() == (
        "severity-v1: of 4 findings with a verdict, 1 rated right, 1 over-rated (the model said more "
        "severe than the reviewers), 1 under-rated (less severe), 1 dismissed; 1 disputed (reviewers "
        "disagree)."
    )
    assert (second.model_version, second.counts["trivial"]["trivial"], second.agreed) == ("severity-v2", 1, 1)
    assert severity_confusion(engine, "g/nothing") == []


def test_the_page_shows_acceptance_matrix_and_trend(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    page = admin.client.get(f"/admin/verdicts?project={world.app}")
    assert page.status_code == 200
    html = page.text
    assert "<h1>Verdicts</h1>" in html
    assert '<table id="verdicts">' in html
    assert "severity-v2" in html
    assert HOSTILE not in html
    assert "g/&lt;script&gt;" in html
    assert re.search(r'<div id="confusion">\s*<table class="matrix">', html)
    assert '<option value="severity-v2" selected>' in html  # the newest version's matrix by default
    assert 'class="num cell-agreed some">1</td>' in html
    assert "severity-v2: of 1 findings with a verdict, 1 rated right" in html
    assert re.search(r'<div id="trend">\s*<figure class="chart"', html)
    chart = html.split('<div id="trend">')[1].split("</figure>")[0]
    assert "<svg" in chart
    assert "style=" not in chart
    assert "<?xml" not in chart
    assert "<!--" not in chart
    v1 = admin.client.get(f"/admin/verdicts?project={world.app}&model=severity-v1").text
    assert 'class="num cell-over some">1</td>' in v1
    assert 'class="num cell-under some">1</td>' in v1
    assert "1 over-rated" in v1
    assert "1 under-rated" in v1
    assert "1 dismissed" in v1


def test_the_page_of_every_project_and_bad_filters(engine: sa.Engine, admin: Admin) -> None:
    seed(engine)
    every = admin.client.get("/admin/verdicts").text
    assert every.count("<tr><td>g/app</td>") >= 1
    assert "<tr><td>g/&lt;script&gt;" in every
    bad = admin.client.get("/admin/verdicts?project=x&model=%3Cb%3E").text
    assert "project must be a number, not &#39;x&#39;" in bad
    assert "no verdicts on model version &#39;&lt;b&gt;&#39;" in bad
    assert '<table class="matrix">' in bad


def test_the_empty_page_says_so(admin: Admin) -> None:
    html = admin.client.get("/admin/verdicts").text
    assert html.count('class="empty"') == 3  # acceptance, matrix, chart
    assert '<div id="confusion">' in html
    assert '<div id="trend">' in html
    assert '<table id="verdicts">' not in html
    assert "<svg" not in html


def test_the_api_gives_rows_and_matrices(engine: sa.Engine, client: TestClient) -> None:
    world = seed(engine)
    answer = client.get(f"/api/v1/verdicts?project={world.app}", headers=bearer())
    assert answer.status_code == 200
    body = answer.json()
    assert body["project"] == "g/app"
    assert body["rows"] == acceptance(engine, "g/app")  # the same function as `feedback stats`
    assert [m["model_version"] for m in body["confusion"]] == ["severity-v1", "severity-v2"]
    v1 = body["confusion"][0]
    assert v1["counts"]["major"] == {**ZERO, "major": 1, "minor": 1}
    assert {k: v1[k] for k in ("judged", "agreed", "over_rated", "under_rated", "dismissed", "disputed")} == {
        "judged": 4, "agreed": 1, "over_rated": 1, "under_rated": 1, "dismissed": 1, "disputed": 1,
    }  # fmt: skip
    every = client.get("/api/v1/verdicts", headers=bearer()).json()
    assert {row["project"] for row in every["rows"]} == {"g/app", f"g/{HOSTILE}"}
    assert client.get("/api/v1/verdicts?project=999", headers=bearer()).json() == {"detail": "no project 999"}
    assert client.get("/api/v1/verdicts?project=x", headers=bearer()).status_code == 422


def test_the_admin_token_is_needed(client: TestClient) -> None:
    assert client.get("/api/v1/verdicts").status_code == 401
    page = client.get("/admin/verdicts", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/admin/login")
    paths = client.get("/openapi.json", headers=bearer()).json()["paths"]
    assert paths["/api/v1/verdicts"]["get"]["tags"] == ["verdicts"]


def test_the_command_line_gives_the_same_matrices(engine: sa.Engine) -> None:
    seed(engine)
    env = {
        **os.environ, "COLUMNS": "200",
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "REVIEWBOT_SECRET_KEY": Fernet.generate_key().decode(),
    }  # fmt: skip
    command = [sys.executable, "-m", "bot.cli", "feedback", "confusion", "--project", "g/app"]
    as_json = subprocess.run([*command, "--format", "json"], env=env, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [m.as_dict() for m in severity_confusion(engine, "g/app")]
    table = subprocess.run(command, env=env, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "→ dismissed" in table.stdout
    assert "1 over-rated" in " ".join(table.stdout.split())
    none = subprocess.run([*command[:-1], "g/none"], env=env, capture_output=True, text=True)
    assert "no finding has a reviewer's /severity or /dismiss yet" in none.stdout


def test_the_chart_is_inline_svg_without_inline_styles() -> None:
    rows = [
        {"model_version": f"v1{HOSTILE}", "findings": 4, "thumbs_up_rate": 0.5, "corrected_rate": 0.25,
         "dismissed_rate": 0.0, "addressed_rate": 0.25},
        {"model_version": "v2", "findings": 2, "thumbs_up_rate": 1.0, "corrected_rate": 0.0,
         "dismissed_rate": 0.0, "addressed_rate": 0.0},
    ]  # fmt: skip
    svg = acceptance_svg(rows)
    assert svg.startswith("<svg ")
    assert svg.rstrip().endswith("</svg>")
    assert "<script" not in svg
    assert "style=" not in svg
    assert "<style" not in svg
    assert 'fill="#1f77b4"' in svg  # the bars' colours survive as presentation attributes
