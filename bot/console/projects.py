"""Projects in the console: the list (``/admin/projects``), each project's page (its settings edited in
place, its webhook URL, a new webhook secret shown once, its audit entries) and ``/api/v1/projects``.

Changing a setting and rotating a secret are ``bot.project_settings``'s, as for ``reviewbot project``:
the same checks, messages and audit entries. Deliveries name no project (the ``Delivery`` table has no
project column), so the list shows each forge's last delivery, and per project its last review (which
its forge's delivery queued).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from sqlmodel import Session, col, func, select
from starlette.datastructures import FormData

from bot import audit, project_settings
from bot.config import Settings
from bot.console import Console
from bot.console.audit_pages import UtcDatetime, changes, shown
from bot.console.auth import Actor
from bot.events import GITHUB_PERMISSIONS, Role
from bot.models import Delivery, ForgeKind, Project, Review
from bot.project_settings import GATE_CHOICES, SEVERITIES, ProjectChange
from bot.secrets import secret_box

PAGE_AUDIT = 50  # a project page's newest audit entries
ROTATED = (
    "Set it as the secret of the project's webhook on the forge now: deliveries signed with the old "
    "secret are refused from now on (within a minute by a running service)."
)


class ReviewBrief(BaseModel):
    id: int
    mr_number: int
    status: str
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class ProjectOut(BaseModel):
    """A project: where it is, its webhook, its settings (as ``ProjectChange`` sets them), its last review."""

    id: int
    forge: str
    forge_url: str
    path: str
    webhook_url: str | None  # None: served by a GitHub App (its webhook is the App's), or no key yet
    installation_id: int | None
    source_id: int | None
    severity_threshold: str
    ignore_globs: list[str]
    enabled: bool
    bot_username: str | None
    feedback_min_role: str | None
    author_labels: bool
    repo_config: bool
    threshold_floor: str | None
    repo_config_keys: list[str] | None
    block_on: str
    max_comments: int
    quiet: bool
    repo_config_status: str | None
    repo_config_checked_at: UtcDatetime | None
    created_at: UtcDatetime
    last_review: ReviewBrief | None


class RotatedSecret(BaseModel):
    webhook_url: str
    webhook_secret: str
    warning: str = ROTATED


class LastDelivery(BaseModel):
    forge: str
    received_at: UtcDatetime
    outcome: str


def webhook_url(settings: Settings, project: Project) -> str | None:
    if project.installation_id is not None or project.webhook_key is None:
        return None
    return settings.webhook_url(project.forge, project.webhook_key)


def _out(settings: Settings, project: Project, last: Review | None) -> ProjectOut:
    assert project.id is not None
    brief = ReviewBrief.model_validate(last, from_attributes=True) if last is not None else None
    return ProjectOut.model_validate(
        {**project.model_dump(), "webhook_url": webhook_url(settings, project), "last_review": brief}
    )


def project_list(console: Console) -> list[ProjectOut]:
    """Every project with its last review, by forge and path."""
    with Session(console.engine) as session:
        projects = session.exec(select(Project).order_by(col(Project.forge), col(Project.path))).all()
        newest = select(func.max(Review.id)).group_by(col(Review.project_id))
        last = {r.project_id: r for r in session.exec(select(Review).where(col(Review.id).in_(newest))).all()}
        return [_out(console.settings, p, last.get(p.id or 0)) for p in projects]


def project_view(console: Console, project_id: int) -> ProjectOut | None:
    with Session(console.engine) as session:
        project = session.get(Project, project_id)
        if project is None:
            return None
        last = session.exec(
            select(Review).where(col(Review.project_id) == project_id).order_by(col(Review.id).desc())
        ).first()
        return _out(console.settings, project, last)


def last_deliveries(console: Console) -> list[LastDelivery]:
    """Each forge's newest delivery: deliveries name no project, so this is as near as they tell."""
    found = []
    with Session(console.engine) as session:
        for forge in ForgeKind:
            newest = session.exec(
                select(Delivery).where(col(Delivery.forge) == forge.value).order_by(col(Delivery.id).desc())
            ).first()
            if newest is not None:
                found.append(LastDelivery.model_validate(newest, from_attributes=True))
    return found


def change_project(console: Console, project_id: int, change: ProjectChange, actor: Actor) -> dict[str, Any]:
    """Apply ``change`` with its audit entry; the changed settings' new values. 404 when unknown."""
    with Session(console.engine) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise _unknown(project_id)
        _, after = project_settings.update_project(session, project, change, actor.name)
        session.commit()
    return after


def rotate(console: Console, project_id: int, actor: Actor) -> RotatedSecret:
    """A new webhook secret for the project, with its audit entry. 404 when unknown."""
    box = secret_box(console.settings)  # the one the intake opens secrets with
    with Session(console.engine) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise _unknown(project_id)
        secret = project_settings.rotate_secret(session, project, box, actor.name)
        session.commit()
        url = console.settings.webhook_url(project.forge, project.webhook_key)
    return RotatedSecret(webhook_url=url, webhook_secret=secret)


def _unknown(project_id: int) -> HTTPException:
    return HTTPException(404, f"no project {project_id}; GET /api/v1/projects lists them")


# The settings form: each field's text as the form holds it, from the project or as the admin sent it.
_CHECKBOXES = ("enabled", "author_labels", "repo_config", "quiet")


def form_values(project: ProjectOut) -> dict[str, Any]:
    keys = project.repo_config_keys
    return {
        "severity_threshold": project.severity_threshold, "ignore_globs": "\n".join(project.ignore_globs),
        "enabled": project.enabled, "bot_username": project.bot_username or "",
        "feedback_min_role": project.feedback_min_role or "default", "author_labels": project.author_labels,
        "repo_config": project.repo_config, "threshold_floor": project.threshold_floor or "none",
        "repo_config_keys": "all" if keys is None else ", ".join(keys), "block_on": project.block_on,
        "max_comments": str(project.max_comments), "quiet": project.quiet,
    }  # fmt: skip


def sent_values(form: FormData) -> dict[str, Any]:
    """The fields the form sent (a checkbox comes with a hidden "false" before it, so an unticked box
    is told from a field not sent); a field not sent keeps the project's value."""
    sent: dict[str, Any] = {}
    for name in project_settings.SETTINGS:
        given = [value for value in form.getlist(name) if isinstance(value, str)]
        if given:
            sent[name] = given[-1] == "true" if name in _CHECKBOXES else given[-1]
    return sent


def change_of(sent: dict[str, Any]) -> ProjectChange:
    """The change the form asks for; ``ValidationError`` says what was wrong."""
    values = dict(sent)
    if "ignore_globs" in values:
        values["ignore_globs"] = [
            line.strip() for line in values["ignore_globs"].splitlines() if line.strip()
        ]
    if "max_comments" in values:
        text = values["max_comments"].strip()
        values["max_comments"] = int(text) if text.isdigit() else text
    return ProjectChange.model_validate(values)


def choices() -> dict[str, Any]:
    """The options of the form's selects."""
    github = {role: name for name, role in GITHUB_PERMISSIONS.items()}
    roles = [("default", "developer (GitHub write), the default")]
    roles += [(role.value, f"{role.value} (GitHub {github[role]})" if role in github else role.value)
              for role in Role]  # fmt: skip
    return {"severities": SEVERITIES, "gates": GATE_CHOICES, "roles": roles}


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    page_actor, api_actor = Depends(console.auth.page_actor), Depends(console.auth.api_actor)

    def project_page(
        request: Request, actor: Actor, project: ProjectOut, status: int = 200, **values: Any
    ) -> HTMLResponse:
        entries = shown(audit.entries(console.engine, project_id=project.id, limit=PAGE_AUDIT))
        in_form = {**form_values(project), **values.pop("sent", {})}
        response = console.page(
            request, "project.html", actor, project=project, values=in_form, choices=choices(),
            entries=[(entry, changes(entry)) for entry in entries], **values,
        )  # fmt: skip
        response.status_code = status
        return response

    def missing(request: Request, actor: Actor, project_id: int) -> HTMLResponse:
        response = console.page(request, "project.html", actor, project=None, project_id=project_id)
        response.status_code = 404
        return response

    @routes.get("/admin/projects", include_in_schema=False)
    def projects_page(request: Request, actor: Actor = page_actor) -> HTMLResponse:
        return console.page(
            request,
            "projects.html",
            actor,
            projects=project_list(console),
            deliveries=last_deliveries(console),
        )

    @routes.get("/admin/projects/{project_id}", include_in_schema=False)
    def one_page(request: Request, project_id: int, actor: Actor = page_actor) -> HTMLResponse:
        project = project_view(console, project_id)
        return (
            missing(request, actor, project_id) if project is None else project_page(request, actor, project)
        )

    @routes.post("/admin/projects/{project_id}/settings", include_in_schema=False)
    async def save(request: Request, project_id: int, actor: Actor = page_actor) -> Response:
        form = await request.form()
        console.auth.check_csrf(actor, _text(form.get("csrf_token")))
        project = project_view(console, project_id)
        if project is None:
            return missing(request, actor, project_id)
        sent = sent_values(form)
        try:
            change = change_of(sent)
        except ValidationError as exc:
            problem = project_settings.describe(exc)
            return project_page(request, actor, project, 422, problem=problem, sent=sent)
        after = change_project(console, project_id, change, actor)
        done = f"saved: {', '.join(after)} changed" if after else "nothing changed"
        return console.back(f"/admin/projects/{project_id}", done=done)

    @routes.post("/admin/projects/{project_id}/rotate-secret", include_in_schema=False)
    async def rotate_page(request: Request, project_id: int, actor: Actor = page_actor) -> Response:
        form = await request.form()
        console.auth.check_csrf(actor, _text(form.get("csrf_token")))
        if project_view(console, project_id) is None:
            return missing(request, actor, project_id)
        rotated = rotate(console, project_id, actor)
        project = project_view(console, project_id)
        assert project is not None
        return project_page(request, actor, project, rotated=rotated)  # shown once: never in a URL

    @routes.get("/api/v1/projects", tags=["projects"], dependencies=[api_actor], summary="Every project")
    def list_api() -> list[ProjectOut]:
        """The registered projects with their settings, webhook URL and last review, by forge and path."""
        return project_list(console)

    @routes.get("/api/v1/projects/{project_id}", tags=["projects"], dependencies=[api_actor],
                summary="One project", responses={404: {"description": "No such project"}})  # fmt: skip
    def one_api(project_id: int) -> ProjectOut:
        project = project_view(console, project_id)
        if project is None:
            raise _unknown(project_id)
        return project

    @routes.patch("/api/v1/projects/{project_id}", tags=["projects"], summary="Change a project's settings",
                  responses={404: {"description": "No such project"}})  # fmt: skip
    def change_api(project_id: int, change: ProjectChange, actor: Actor = api_actor) -> ProjectOut:
        """Change the settings given (the others keep their value), with an audit entry; 422 names the
        setting refused and why, and nothing changes."""
        change_project(console, project_id, change, actor)
        project = project_view(console, project_id)
        assert project is not None
        return project

    @routes.post("/api/v1/projects/{project_id}/rotate-secret", tags=["projects"],
                 summary="Give a project a new webhook secret",
                 responses={404: {"description": "No such project"}})  # fmt: skip
    def rotate_api(project_id: int, actor: Actor = api_actor) -> RotatedSecret:
        """A new random webhook secret, returned once (it is stored sealed and never shown again): set it
        on the forge's webhook. Deliveries signed with the old one are refused from then on."""
        return rotate(console, project_id, actor)

    return routes


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
