"""The console under test: the real app (``create_app`` and ``mount_console``, as ``reviewbot serve``
builds it) on a migrated database, with an admin token, and helpers to sign in and read the CSRF token
a page's forms carry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bot.api import create_app
from bot.config import Settings, load_settings
from bot.console import mount_console
from bot.secrets import secret_box

TOKEN = "console-test-token-0123456789"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class NoDeliveries:
    """The intake's queue: console tests send no webhook."""

    def wake(self) -> None:
        raise AssertionError("no delivery was sent")


def console_app(engine: sa.Engine, jobs: Any = None, **settings: Any) -> tuple[FastAPI, Settings]:
    values: dict[str, Any] = {"admin_token": TOKEN, **settings}
    configured = load_settings(**values)
    app = create_app(engine, jobs or NoDeliveries(), configured)
    mount_console(app, engine, configured, secret_box(configured))
    return app, configured


@dataclass
class Admin:
    """A signed-in browser-like client: the session cookie, and the CSRF token of its session."""

    client: TestClient
    csrf: str

    def form(self, path: str, data: dict[str, Any], **kwargs: Any) -> Any:
        """POST a console form, with the session's CSRF token; redirects are not followed."""
        return self.client.post(
            path, data={"csrf_token": self.csrf, **data}, follow_redirects=False, **kwargs
        )

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An API call made with the session cookie (and its CSRF header, as the console's script sends)."""
        headers = {"X-CSRF-Token": self.csrf, **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)


def sign_in(client: TestClient, token: str = TOKEN) -> Admin:
    response = client.post("/admin/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/admin/projects"
    page = client.get("/admin/projects")
    match = _CSRF.search(page.text)
    assert match is not None, "a console page carries its session's CSRF token"
    return Admin(client, match.group(1))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def console_client(engine: sa.Engine, **settings: Any) -> Iterator[TestClient]:
    app, _ = console_app(engine, **settings)
    with TestClient(app) as client:
        yield client
