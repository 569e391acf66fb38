"""Projects in the console and ``/api/v1/projects``, and the audit log (page, API, ``reviewbot audit
list``): every action through the API, the form and the command line goes through one implementation
(``bot.project_settings``), refuses bad input with a clear message changing nothing, and leaves the
same audit entry, with the values before and after and never a secret."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.models import AuditEntry, Delivery, Project, Review
from bot.project_settings import GATE_CHOICES
from bot.review.gate import GATE_CHOICES as REVIEW_GATE_CHOICES
from tests.support.console import Admin, bearer, console_client, sign_in
from tests.support.db import session_scope
from tests.support.fixtures import FIXTURES
from tests.support.secrets import BOX, SECRET_KEY, project_row

HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@dataclass
class World:
    client: TestClient
    admin: Admin
    app: int  # project ids
    other: int


@pytest.fixture
def world(engine: sa.Engine) -> Iterator[World]:
    with session_scope(engine) as session:
        app = project_row(
            "old-secret",
            forge="gitlab",
            forge_url="http://gitlab.test",
            path="team/app",
            webhook_key="key-app",
            bot_username="rb",
        )
        other = project_row(
            "s",
            forge="github",
            forge_url="https://github.com",
            path=f"octo/{HOSTILE}",
            webhook_key="key-other",
            ignore_globs=["docs/**"],
        )
        session.add_all([app, other])
        session.flush()
        app_id, other_id = app.id, other.id
        assert app_id is not None
        assert other_id is not None
        session.add(Review(project_id=app_id, mr_number=7, head_sha="a" * 40, status="done", created_at=T0))
        session.add(Delivery(forge="gitlab", delivery_id="d1", received_at=T0, outcome="review 1 queued"))
    with console_client(engine, secret_key=SECRET_KEY) as client:
        yield World(client, sign_in(client), app_id, other_id)


def stored(engine: sa.Engine, project_id: int) -> Project:
    with Session(engine) as session:
        project = session.get(Project, project_id)
        assert project is not None
        return project


def entries(engine: sa.Engine) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all())


def settings(project: Project) -> dict[str, Any]:
    return {
        name: getattr(project, name)
        for name in (
            "severity_threshold",
            "ignore_globs",
            "enabled",
            "feedback_min_role",
            "block_on",
            "max_comments",
            "quiet",
            "webhook_secret",
        )
    }


def test_gate_choices_match_the_gates() -> None:
    assert GATE_CHOICES == REVIEW_GATE_CHOICES


def test_the_list_shows_every_project_escaped(world: World) -> None:
    page = world.client.get("/admin/projects")
    assert page.status_code == 200
    assert 'id="projects"' in page.text
    assert f'<tr id="project-{world.app}">' in page.text
    assert f'href="/admin/projects/{world.other}"' in page.text
    assert HOSTILE not in page.text
    assert "octo/&lt;script&gt;" in page.text
    assert "review 1 queued" in page.text  # the forge's last delivery
    row = page.text[page.text.index(f'<tr id="project-{world.app}">') :].split("</tr>")[0]
    for part in ("!7", "done", "2026-03-02 09:30 UTC"):  # its last review
        assert part in row

    listed = world.client.get("/api/v1/projects", headers=bearer()).json()
    assert [p["path"] for p in listed] == [f"octo/{HOSTILE}", "team/app"]  # by forge, then path
    app = listed[1]
    assert app["webhook_url"] == "http://127.0.0.1:8080/webhooks/gitlab/key-app"
    assert (app["severity_threshold"], app["enabled"], app["ignore_globs"]) == ("minor", True, [])
    assert app["last_review"]["mr_number"] == 7
    assert "webhook_secret" not in app
    assert listed[0]["last_review"] is None
    one = world.client.get(f"/api/v1/projects/{world.other}", headers=bearer()).json()
    assert one["ignore_globs"] == ["docs/**"]


def test_no_projects_says_so(engine: sa.Engine) -> None:
    with console_client(engine) as client:
        sign_in(client)
        page = client.get("/admin/projects")
    assert 'class="empty"' in page.text
    assert 'id="projects"' not in page.text


def test_the_project_page(world: World) -> None:
    page = world.client.get(f"/admin/projects/{world.app}")
    assert page.status_code == 200
    for part in (
        "<h1>Project team/app</h1>",
        'id="settings-form"',
        'id="save"',
        'id="rotate-form"',
        'id="rotate"',
        'name="severity_threshold"',
        'name="ignore_globs"',
        'name="enabled"',
        'name="feedback_min_role"',
        'name="author_labels"',
        'name="block_on"',
        'name="max_comments"',
        'name="quiet"',
    ):
        assert part in page.text
    assert '<code id="webhook-url">http://127.0.0.1:8080/webhooks/gitlab/key-app</code>' in page.text
    assert 'id="new-secret"' not in page.text
    assert 'class="empty">No changes recorded' in page.text
    hostile = world.client.get(f"/admin/projects/{world.other}")
    assert HOSTILE not in hostile.text


def test_a_change_through_the_api_is_audited(world: World, engine: sa.Engine) -> None:
    change = {
        "severity_threshold": "MAJOR",
        "ignore_globs": ["vendor/**", " *.lock ", "vendor/**"],
        "feedback_min_role": "maintain",
        "block_on": "critical",
        "max_comments": 3,
        "quiet": True,
    }
    answer = world.admin.api("PATCH", f"/api/v1/projects/{world.app}", json=change)
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert (shown["severity_threshold"], shown["ignore_globs"]) == ("major", ["vendor/**", "*.lock"])
    assert (shown["feedback_min_role"], shown["block_on"], shown["max_comments"]) == (
        "maintainer",
        "critical",
        3,
    )
    project = stored(engine, world.app)
    assert (project.severity_threshold, project.quiet, project.enabled) == ("major", True, True)

    [entry] = entries(engine)
    assert (entry.actor, entry.action, entry.project_id) == ("admin token", "project.update", world.app)
    assert entry.target == f"project {world.app} (gitlab team/app)"
    assert entry.before == {
        "severity_threshold": "minor",
        "ignore_globs": [],
        "feedback_min_role": None,
        "block_on": "off",
        "max_comments": 10,
        "quiet": False,
    }
    assert entry.after == {
        "severity_threshold": "major",
        "ignore_globs": ["vendor/**", "*.lock"],
        "feedback_min_role": "maintainer",
        "block_on": "critical",
        "max_comments": 3,
        "quiet": True,
    }

    again = world.client.patch(f"/api/v1/projects/{world.app}", headers=bearer(), json=change)
    assert again.status_code == 200
    assert len(entries(engine)) == 1  # nothing changed: nothing to record

    resets = {"feedback_min_role": "default", "threshold_floor": "none", "repo_config_keys": "all"}
    assert (
        world.client.patch(f"/api/v1/projects/{world.app}", headers=bearer(), json=resets).status_code == 200
    )
    keys = {"repo_config_keys": "summary, instructions", "threshold_floor": "Major"}
    shown = world.client.patch(f"/api/v1/projects/{world.app}", headers=bearer(), json=keys).json()
    assert (shown["repo_config_keys"], shown["threshold_floor"]) == (["instructions", "summary"], "major")


def test_a_change_through_the_form_is_audited(world: World, engine: sa.Engine) -> None:
    form = {
        "severity_threshold": "trivial",
        "ignore_globs": "docs/**\r\n\r\n  *.md  \r\n",
        "enabled": ["false"],
        "author_labels": ["false", "true"],
        "block_on": "major",
        "max_comments": "4",
    }
    answer = world.admin.form(f"/admin/projects/{world.app}/settings", form)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"/admin/projects/{world.app}?done=saved")
    project = stored(engine, world.app)
    assert (project.severity_threshold, project.ignore_globs, project.enabled) == (
        "trivial",
        ["docs/**", "*.md"],
        False,
    )
    assert (project.author_labels, project.block_on, project.max_comments) == (True, "major", 4)
    assert (project.quiet, project.bot_username) == (False, "rb")  # not sent: kept
    [entry] = entries(engine)
    assert entry.action == "project.update"
    assert (entry.before["enabled"], entry.after["enabled"]) == (True, False)
    assert set(entry.after) == {
        "severity_threshold",
        "ignore_globs",
        "enabled",
        "author_labels",
        "block_on",
        "max_comments",
    }

    page = world.client.get(location)
    assert 'role="status">saved: severity_threshold' in page.text
    assert 'id="audit"' in page.text
    assert "&#34;docs/**&#34;" in page.text  # the new globs, as JSON, escaped
    assert '<option value="trivial" selected>' in page.text  # the form shows the stored values


BAD = [
    (
        {"severity_threshold": "severe"},
        "severity_threshold",
        "no severity 'severe'; one of critical, major, minor, trivial",
    ),
    ({"severity_threshold": None}, "severity_threshold", "may not be null"),
    ({"ignore_globs": ["src/**", "**"]}, "ignore_globs", "pattern '**' ignores every file"),
    ({"ignore_globs": ["   "]}, "ignore_globs", "an empty pattern"),
    ({"ignore_globs": ["a\x1bb"]}, "ignore_globs", "control characters"),
    ({"ignore_globs": ["x" * 300]}, "ignore_globs", "at most 256"),
    ({"feedback_min_role": "boss"}, "feedback_min_role", "no role 'boss'"),
    ({"repo_config_keys": ["threshold", "colour"]}, "repo_config_keys", "no key 'colour'"),
    ({"block_on": "blocker"}, "block_on", "no severity 'blocker'; one of off, critical,"),
    ({"max_comments": 0}, "max_comments", "greater than or equal to 1"),
    ({"threshold_floor": "severe"}, "threshold_floor", "or none"),
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_refused_and_changes_nothing(
    world: World, engine: sa.Engine, change: dict[str, Any], field: str, message: str
) -> None:
    before = settings(stored(engine, world.app))
    ok = {"enabled": False}  # a good field beside the bad one is not applied either
    answer = world.client.patch(f"/api/v1/projects/{world.app}", headers=bearer(), json={**ok, **change})
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"][:2] == ["body", field]
    assert message in problem["msg"]

    if field != "colour" and change != {"ignore_globs": ["   "]}:  # a form has neither
        sent = {name: "\n".join(value) if name == "ignore_globs" else value for name, value in change.items()}
        sent = {name: "" if value is None else value for name, value in sent.items()}
        if "repo_config_keys" in sent:
            sent["repo_config_keys"] = ",".join(sent["repo_config_keys"])
        page = world.admin.form(f"/admin/projects/{world.app}/settings", {"enabled": "false", **sent})
        assert page.status_code == 422
        assert 'id="problem">Nothing was saved: ' + field in page.text
        assert 'name="enabled" id="enabled" value="true">' in page.text  # the form keeps what was sent
    assert settings(stored(engine, world.app)) == before
    assert entries(engine) == []


def test_an_unknown_project_is_a_404(world: World, engine: sa.Engine) -> None:
    for method, path, body in (
        ("GET", "/api/v1/projects/999", None),
        ("PATCH", "/api/v1/projects/999", {"enabled": False}),
        ("POST", "/api/v1/projects/999/rotate-secret", None),
    ):
        answer = world.client.request(method, path, headers=bearer(), json=body)
        assert answer.status_code == 404
        assert answer.json()["detail"] == "no project 999; GET /api/v1/projects lists them"
    assert world.client.get("/admin/projects/999").status_code == 404
    for action in ("settings", "rotate-secret"):
        page = world.admin.form(f"/admin/projects/999/{action}", {"enabled": "false"})
        assert page.status_code == 404
        assert 'class="empty">No project 999' in page.text
    assert entries(engine) == []


def test_rotating_the_secret_shows_it_once_and_never_records_it(world: World, engine: sa.Engine) -> None:
    answer = world.admin.form(f"/admin/projects/{world.app}/rotate-secret", {})
    assert answer.status_code == 200  # the page answering the POST: the secret is in no URL
    assert "location" not in answer.headers
    secret = BOX.open(stored(engine, world.app).webhook_secret)
    assert secret not in (None, "old-secret")
    assert f'id="new-secret">{secret}</p>' in answer.text
    assert "Set it as the secret of the project&#39;s webhook on the forge now" in answer.text
    assert secret not in world.client.get(f"/admin/projects/{world.app}").text  # shown once

    rotated = world.client.post(f"/api/v1/projects/{world.app}/rotate-secret", headers=bearer()).json()
    assert rotated["webhook_url"] == "http://127.0.0.1:8080/webhooks/gitlab/key-app"
    assert BOX.open(stored(engine, world.app).webhook_secret) == rotated["webhook_secret"] != secret
    assert "refused" in rotated["warning"]

    logged = entries(engine)
    assert [e.action for e in logged] == ["project.rotate_secret"] * 2
    text = json.dumps([[e.before, e.after, e.target] for e in logged])
    for hidden in (secret, rotated["webhook_secret"], "old-secret", "fernet:"):
        assert hidden not in text

    payload = json.loads((FIXTURES / "gitlab" / "webhooks" / "emoji.award.issue_note.json").read_text())
    payload["project"]["path_with_namespace"] = "team/app"
    for token, answer in (("old-secret", 401), (rotated["webhook_secret"], 200)):
        headers = {"X-Gitlab-Event": "Emoji Hook", "X-Gitlab-Token": token}
        delivered = world.client.post("/webhooks/gitlab/key-app", json=payload, headers=headers)
        assert delivered.status_code == answer, delivered.text  # the intake takes the new secret


@pytest.fixture
def cli_env(engine: sa.Engine) -> dict[str, str]:
    return {
        "REVIEWBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "REVIEWBOT_SECRET_KEY": SECRET_KEY,
        "COLUMNS": "200",
    }


def test_the_command_line_writes_the_same_entries(
    world: World, engine: sa.Engine, cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    done = runner.invoke(
        cli,
        [
            "project",
            "set",
            "team/app",
            "--threshold",
            "major",
            "--ignore",
            "vendor/**",
            "--block-on",
            "critical",
            "--quiet",
        ],
        env=cli_env,
    )
    assert done.exit_code == 0, done.output
    assert "threshold major, ignore vendor/**, enabled" in done.stdout
    world.client.patch(
        f"/api/v1/projects/{world.other}",
        headers=bearer(),
        json={
            "severity_threshold": "major",
            "ignore_globs": ["vendor/**"],
            "block_on": "critical",
            "quiet": True,
        },
    )
    by_cli, by_api = entries(engine)
    assert by_cli.actor == f"cli:{getpass.getuser()}"
    assert (by_cli.action, by_cli.project_id) == ("project.update", world.app)
    assert (
        by_cli.after
        == by_api.after
        == {
            "severity_threshold": "major",
            "ignore_globs": ["vendor/**"],
            "block_on": "critical",
            "quiet": True,
        }
    )
    assert by_cli.before == {
        "severity_threshold": "minor",
        "ignore_globs": [],
        "block_on": "off",
        "quiet": False,
    }

    refused = runner.invoke(cli, ["project", "set", "team/app", "--ignore", "**", "--disabled"], env=cli_env)
    assert refused.exit_code == 2
    assert "--ignore: pattern '**' ignores every file" in refused.output
    assert stored(engine, world.app).enabled is True

    rotated = runner.invoke(cli, ["project", "rotate-secret", "team/app"], env=cli_env)
    assert rotated.exit_code == 0, rotated.output
    secret = rotated.stdout.split("webhook secret: ")[1].strip()
    assert BOX.open(stored(engine, world.app).webhook_secret) == secret
    last = entries(engine)[-1]
    assert last.action == "project.rotate_secret"
    assert secret not in json.dumps([last.before, last.after])


def test_the_audit_log_page_api_and_command(world: World, engine: sa.Engine, cli_env: dict[str, str]) -> None:
    assert 'class="empty">No changes recorded' in world.client.get("/admin/audit").text
    with session_scope(engine) as session:  # an old entry, for --since
        session.add(
            AuditEntry(
                actor="cli:old",
                action="project.update",
                target="project 1 (gitlab team/app)",
                project_id=world.app,
                created_at=T0 - timedelta(days=30),
            )
        )
    world.client.patch(
        f"/api/v1/projects/{world.app}", headers=bearer(), json={"severity_threshold": "major"}
    )
    world.client.patch(f"/api/v1/projects/{world.other}", headers=bearer(), json={"ignore_globs": [HOSTILE]})

    page = world.client.get("/admin/audit")
    assert page.status_code == 200
    assert "<h1>Audit</h1>" in page.text
    assert 'id="audit"' in page.text
    assert HOSTILE not in page.text
    assert "&lt;script&gt;" in page.text
    only = world.client.get(f"/admin/audit?project={world.app}").text
    assert "team/app" in only
    assert "octo/" not in only.split('id="audit"')[1]

    api = world.client.get("/api/v1/audit", headers=bearer()).json()
    assert [(e["project_id"], e["actor"]) for e in api] == [
        (world.other, "admin token"),
        (world.app, "admin token"),
        (world.app, "cli:old"),
    ]
    assert api[0]["after"] == {"ignore_globs": [HOSTILE]}
    since = world.client.get(
        f"/api/v1/audit?project={world.app}&since=2026-03-01&limit=5", headers=bearer()
    ).json()
    assert [e["actor"] for e in since] == ["admin token"]
    assert world.client.get("/api/v1/audit?limit=0", headers=bearer()).status_code == 422

    runner = CliRunner()
    listed = runner.invoke(cli, ["audit", "list", "--format", "json", "--limit", "2"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == api[:2]
    table = runner.invoke(cli, ["audit", "list", "--project", "team/app"], env=cli_env)
    assert table.exit_code == 0, table.output
    assert "project.update" in table.stdout
    assert "cli:old" in table.stdout
    assert 'severity_threshold: "minor" → "major"' in table.stdout
    recent = runner.invoke(
        cli, ["audit", "list", "--project", "team/app", "--since", "2026-03-01"], env=cli_env
    )
    assert "cli:old" not in recent.stdout
    none = runner.invoke(cli, ["audit", "list", "--since", "2999-01-01"], env=cli_env)
    assert none.stdout.strip() == "no audit entries since then"
    unknown = runner.invoke(cli, ["audit", "list", "--project", "nope/x"], env=cli_env)
    assert unknown.exit_code == 2
    assert "no project 'nope/x'" in unknown.output
