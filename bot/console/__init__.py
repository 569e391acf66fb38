"""The admin console: server-rendered pages at ``/admin`` and their JSON at ``/api/v1``.

Each part is a module with a ``router(console) -> APIRouter`` (``projects``, ``reviews``,
``verdicts``, ``audit_set``, ``health``, ``audit_pages``); the trainer adds its own (flywheel runs,
models) through the ``reviewbot.console`` entry point, so ``bot`` never imports ``flywheel``. Pages
and API share one implementation of each action and each query (the command line's, where it has
one). Every page and call needs the admin token (``bot.console.auth``); every change is written to
the audit log (``bot.audit``). Pages are plain HTML (Jinja2, autoescaped), charts are SVG made on the
server, and the one script (live updates) is served from the app: no build step, no inline script.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape

from bot import __version__
from bot.config import Settings
from bot.console.auth import COOKIE, CSRF_FIELD, SESSION_TTL_S, Actor, Auth, NotSignedIn
from bot.secrets import SecretBox

NAV = (("Projects", "/admin/projects"), ("Reviews", "/admin/reviews"), ("Verdicts", "/admin/verdicts"),
       ("Severity audit", "/admin/severity-audit"), ("Flywheel", "/admin/flywheel"),
       ("Models", "/admin/models"), ("Health", "/admin/health"), ("Audit", "/admin/audit"))  # fmt: skip
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
RouterFactory = Callable[["Console"], APIRouter]


class Console:
    """What every part of the console shares: the database, the settings, sign-in, the templates."""

    def __init__(self, engine: sa.Engine, settings: Settings, box: SecretBox) -> None:
        self.engine, self.settings = engine, settings
        self.auth = Auth(settings, box)
        self._loaders: list[Any] = [PackageLoader("bot.console", "templates")]
        self.templates = Environment(
            loader=ChoiceLoader(self._loaders), autoescape=select_autoescape(default=True)
        )
        self.templates.globals.update(nav=NAV, version=__version__, csrf_field=CSRF_FIELD)

    def add_templates(self, package: str, folder: str = "templates") -> None:
        """Templates of another package (the trainer's pages), found after the console's own."""
        self._loaders.append(PackageLoader(package, folder))

    def page(self, request: Request, template: str, actor: Actor, **values: Any) -> HTMLResponse:
        """A page, rendered with the actor's CSRF token for its forms and the notice of a redirect."""
        body = self.templates.get_template(template).render(
            request=request, actor=actor, csrf=actor.csrf, done=request.query_params.get("done"),
            error=request.query_params.get("error"), **values,
        )  # fmt: skip
        return HTMLResponse(body, headers=HEADERS)

    @staticmethod
    def back(path: str, *, done: str | None = None, error: str | None = None) -> RedirectResponse:
        """After a form: to ``path``, saying what was done or what went wrong (POST, redirect, GET)."""
        notice = f"?done={quote(done)}" if done else f"?error={quote(error)}" if error else ""
        return RedirectResponse(path + notice, status_code=303)


def mount_console(app: FastAPI, engine: sa.Engine, settings: Settings, box: SecretBox) -> Console:
    """Serve the console at ``/admin`` and its API at ``/api/v1`` on ``app``."""
    console = Console(engine, settings, box)
    auth = console.auth

    @app.exception_handler(NotSignedIn)
    async def sign_in_first(request: Request, _exc: NotSignedIn) -> Response:
        return RedirectResponse(f"/admin/login?next={quote(request.url.path)}", status_code=303)

    @app.get("/admin", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/admin/projects", status_code=303)

    @app.get("/admin/login", include_in_schema=False)
    def login_page(request: Request) -> HTMLResponse:
        body = console.templates.get_template("login.html").render(
            request=request, configured=auth.configured, error=request.query_params.get("error"),
            next=_local(request.query_params.get("next")), actor=None,
        )  # fmt: skip
        return HTMLResponse(body, headers=HEADERS)

    @app.post("/admin/login", include_in_schema=False)
    def login(request: Request, token: str = Form(""), next: str = Form("/admin/projects")) -> Response:
        client = request.client.host if request.client else "?"
        again = f"/admin/login?next={quote(_local(next))}&error="
        if not auth.allow_attempt(client):
            return RedirectResponse(
                again + quote("too many sign-in attempts: wait a minute"), status_code=303
            )
        if not auth.token_matches(token):
            return RedirectResponse(again + quote("wrong token"), status_code=303)
        cookie, _ = auth.new_session()
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                            secure=auth.secure, path="/")  # fmt: skip
        return response

    @app.post("/admin/logout", include_in_schema=False)
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        actor = auth.page_actor(request)
        auth.check_csrf(actor, csrf_token)
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    app.mount("/admin/static", StaticFiles(packages=[("bot.console", "static")]), name="console-static")
    for factory in _parts():
        app.include_router(factory(console))
    return console


def _local(path: str | None) -> str:
    """A redirect target within the console only: no open redirect to another site."""
    if not path or not path.startswith("/admin") or path.startswith("//"):
        return "/admin/projects"
    return path


def _parts() -> list[RouterFactory]:
    """The console's own parts, then the trainer's (entry point ``reviewbot.console``)."""
    from bot.console import audit_pages, audit_set, health, projects, reviews, verdicts

    own: list[RouterFactory] = [
        projects.router,
        reviews.router,
        verdicts.router,
        audit_set.router,
        health.router,
        audit_pages.router,
    ]
    return own + [entry.load() for entry in entry_points(group="reviewbot.console")]
