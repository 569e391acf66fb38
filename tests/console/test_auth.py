"""Who may use the console: the admin token at sign-in (a session cookie, HttpOnly, SameSite=Strict,
Secure behind https) or as a bearer token. Every page and API route of the app as ``reviewbot serve``
builds it refuses without it (the routes are enumerated, so new ones are covered), a session's changes
need its CSRF token, sign-ins are rate-limited, the console is off without a token, redirects stay in
the console, and /healthz and the webhooks stay public."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import fastapi.routing
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.console.auth import SIGN_IN_ATTEMPTS
from bot.models import AuditEntry, Project
from tests.support.console import TOKEN, bearer, console_app, console_client, sign_in
from tests.support.db import session_scope
from tests.support.fixtures import FIXTURES
from tests.support.secrets import SECRET_KEY, project_row

OPEN = {("GET", "/admin"), ("GET", "/admin/login"), ("POST", "/admin/login")}  # a redirect, and sign-in
WEBHOOK_SECRET = "hook-secret"


class AnyJobs:
    def wake(self) -> None:
        pass


@pytest.fixture
def project_id(engine: sa.Engine) -> int:
    with session_scope(engine) as session:
        project = project_row(
            WEBHOOK_SECRET,
            forge="gitlab",
            forge_url="http://gitlab.test",
            path="flightjs/Flight",
            webhook_key="key-1",
        )
        session.add(project)
        session.flush()
        assert project.id is not None
        return project.id


@pytest.fixture
def client(engine: sa.Engine, project_id: int) -> Iterator[TestClient]:
    del project_id
    with console_client(engine, secret_key=SECRET_KEY) as client:
        yield client


def routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """Every (method, path, documented) of the app's console and API, found in its router: included
    routers too (FastAPI's ``iter_route_contexts``, where the version has it)."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    found = []
    for route in walk(app.routes) if walk is not None else app.routes:
        path, methods = getattr(route, "path", ""), getattr(route, "methods", None) or set()
        if path.startswith(("/admin", "/api/v1")) and not path.startswith("/admin/static"):
            documented = bool(getattr(route, "include_in_schema", True))
            found += [(method, path, documented) for method in methods if method != "HEAD"]
    return sorted(set(found))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def state(engine: sa.Engine) -> tuple[list[str], int]:
    """What a refused request must not have changed: the project's settings, and the audit log."""
    with Session(engine) as session:
        projects = [p.model_dump_json(exclude={"created_at"}) for p in session.exec(select(Project)).all()]
        return projects, len(session.exec(select(AuditEntry)).all())


def test_the_routes_are_found(engine: sa.Engine) -> None:
    app, _ = console_app(engine)
    found = {(method, path) for method, path, _ in routes(app)}
    for route in (
        ("GET", "/admin/projects"),
        ("GET", "/admin/projects/{project_id}"),
        ("GET", "/admin/audit"),
        ("GET", "/api/v1/projects"),
        ("PATCH", "/api/v1/projects/{project_id}"),
        ("POST", "/api/v1/projects/{project_id}/rotate-secret"),
        ("GET", "/api/v1/audit"),
        ("GET", "/admin/reviews"),
        ("GET", "/admin/flywheel"),
    ):
        assert route in found


def test_every_page_and_api_route_refuses_without_the_token(engine: sa.Engine, client: TestClient) -> None:
    assert isinstance(client.app, FastAPI)
    app, before = client.app, state(engine)
    wrong = {"Authorization": "Bearer not-the-token"}
    for method, path, documented in routes(app):
        if (method, path) in OPEN:
            continue
        url = concrete(path)
        for headers in ({}, wrong):
            answer = client.request(
                method, url, headers=headers, json={} if method != "GET" else None, follow_redirects=False
            )
            where = f"{method} {path} {'with a wrong bearer' if headers else 'without auth'}"
            if path.startswith("/api/v1"):
                assert answer.status_code == 401, f"{where}: {answer.status_code} {answer.text[:200]}"
                assert "sign in at /admin/login" in answer.json()["detail"]
            else:
                assert answer.status_code == 303, f"{where}: {answer.status_code} {answer.text[:200]}"
                assert answer.headers["location"].startswith("/admin/login?next=/admin")
        if path.startswith("/api/v1"):
            assert documented, f"{method} {path} is not in /openapi.json"
    assert state(engine) == before


def test_every_api_route_is_documented(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    schema = client.get("/openapi.json", headers=bearer()).json()
    for path, operations in schema["paths"].items():
        if path.startswith("/api/v1"):
            for method, operation in operations.items():
                assert operation.get("tags"), f"{method} {path} has no tag"
    assert "patch" in schema["paths"]["/api/v1/projects/{project_id}"]
    assert "ProjectChange" in json.dumps(schema["components"])


def test_a_bearer_token_reaches_every_api_route(client: TestClient) -> None:
    assert isinstance(client.app, FastAPI)
    for method, path, _ in routes(client.app):
        if method == "GET" and path.startswith("/api/v1"):
            answer = client.get(concrete(path), headers=bearer())
            assert answer.status_code not in (401, 403), f"GET {path}: {answer.text[:200]}"
    assert client.get("/api/v1/projects", headers=bearer()).json()[0]["path"] == "flightjs/Flight"
    changed = client.patch("/api/v1/projects/1", headers=bearer(), json={"quiet": True})
    assert changed.status_code == 200  # a bearer call needs no CSRF token: a browser never sends one


def test_sign_in_refuses_a_wrong_token_and_accepts_the_right_one(client: TestClient) -> None:
    refused = client.post("/admin/login", data={"token": "guess"}, follow_redirects=False)
    assert refused.status_code == 303
    assert refused.headers["location"] == "/admin/login?next=/admin/projects&error=wrong%20token"
    assert "set-cookie" not in refused.headers
    assert client.get("/admin/projects", follow_redirects=False).status_code == 303
    assert client.post("/admin/login", data={"token": ""}, follow_redirects=False).headers["location"] == (
        "/admin/login?next=/admin/projects&error=wrong%20token"
    )
    admin = sign_in(client)
    page = client.get("/admin/projects")
    assert page.status_code == 200
    assert f'value="{admin.csrf}"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.get("/api/v1/projects").status_code == 200  # the session works for the API too


def test_the_session_cookie_is_httponly_and_strict(engine: sa.Engine) -> None:
    for public_url, secure in (("http://127.0.0.1:8080", False), ("https://bot.example.com", True)):
        with console_client(engine, public_url=public_url) as client:
            answer = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
        cookie = answer.headers["set-cookie"]
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert ("secure" in flags) is secure
        assert "path=/" in flags


def test_a_change_without_the_csrf_token_is_refused(engine: sa.Engine, client: TestClient) -> None:
    stale = sign_in(client).csrf  # an earlier session's token
    admin = sign_in(client)
    assert admin.csrf != stale
    before = state(engine)
    for headers in ({}, {"X-CSRF-Token": stale}, {"X-CSRF-Token": ""}):
        for method, path in (("PATCH", "/api/v1/projects/1"), ("POST", "/api/v1/projects/1/rotate-secret")):
            answer = client.request(method, path, headers=headers, json={"enabled": False})
            assert answer.status_code == 403, f"{method} {path} with {headers}"
            assert "reload the page" in answer.json()["detail"]
    for form in ({}, {"csrf_token": stale}):
        for action in ("settings", "rotate-secret"):
            answer = client.post(
                f"/admin/projects/1/{action}", data={"enabled": "false", **form}, follow_redirects=False
            )
            assert answer.status_code == 403
    assert client.post("/admin/logout", data={"csrf_token": stale}, follow_redirects=False).status_code == 403
    assert state(engine) == before
    done = admin.api("PATCH", "/api/v1/projects/1", json={"enabled": False})
    assert done.status_code == 200  # with its own token, the same call goes through
    assert state(engine) != before


def test_sign_ins_are_rate_limited(client: TestClient) -> None:
    for _ in range(SIGN_IN_ATTEMPTS):
        client.post("/admin/login", data={"token": "guess"}, follow_redirects=False)
    refused = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
    assert refused.status_code == 303
    assert "too%20many%20sign-in%20attempts" in refused.headers["location"]
    assert "set-cookie" not in refused.headers


def test_without_an_admin_token_the_console_is_off(engine: sa.Engine) -> None:
    with console_client(engine, admin_token=None) as client:
        answer = client.get("/api/v1/projects", headers=bearer())
        assert answer.status_code == 403
        assert "set REVIEWBOT_ADMIN_TOKEN" in answer.json()["detail"]
        assert client.get("/api/v1/projects", headers={"Authorization": "Bearer "}).status_code == 403
        page = client.get("/admin/projects")  # to the sign-in page, which says how to turn it on
        assert page.status_code == 200
        assert "The console is off: set <code>REVIEWBOT_ADMIN_TOKEN</code>" in page.text
        refused = client.post("/admin/login", data={"token": ""}, follow_redirects=False)
        assert "set-cookie" not in refused.headers


def test_healthz_and_webhooks_stay_public(engine: sa.Engine, project_id: int) -> None:
    del project_id
    app, _ = console_app(engine, jobs=AnyJobs(), secret_key=SECRET_KEY)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        body = (FIXTURES / "gitlab" / "webhooks" / "emoji.award.issue_note.json").read_bytes()
        headers = {
            "X-Gitlab-Event": "Emoji Hook",
            "X-Gitlab-Token": WEBHOOK_SECRET,
            "Idempotency-Key": "public-1",
            "Content-Type": "application/json",
        }
        delivered = client.post("/webhooks/gitlab/key-1", content=body, headers=headers)
        assert delivered.status_code == 200, delivered.text  # the forge's secret, not the admin token
        assert "sign in" not in delivered.text


@pytest.mark.parametrize(
    ("given", "goes_to"),
    [
        ("//evil.example/admin", "/admin/projects"),
        ("https://evil.example/", "/admin/projects"),
        ("/\\evil.example", "/admin/projects"),
        ("javascript:alert(1)", "/admin/projects"),
        ("/admin/audit?project=1", "/admin/audit?project=1"),
    ],
)
def test_sign_in_never_redirects_off_the_console(client: TestClient, given: str, goes_to: str) -> None:
    answer = client.post("/admin/login", data={"token": TOKEN, "next": given}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == goes_to
    page = client.get("/admin/login", params={"next": given})
    assert f'name="next" value="{goes_to}"'.replace("&", "&amp;") in page.text
