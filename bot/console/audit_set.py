"""The blind severity audit in the console (``/admin/severity-audit``), as ``reviewbot feedback audit``
does it on the command line (``bot.feedback.audit_set``): the next item without the model's severity,
its explanation or whether it was posted; a label recorded with the admin's name; the model's severity
shown only once labelled (in the notice after the form); how far the audit is and how the labels
compare with the model's severities.

Page and ``/api/v1/severity-audit`` share the module's functions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from bot.console import Console
from bot.console.auth import Actor
from bot.feedback import audit_set
from bot.feedback.audit_set import AGREEMENTS, AuditError, AuditLabel

PAGE = "/admin/severity-audit"
SHOWN_LABELLED = 50  # the page's newest labelled items


class LabelIn(BaseModel):
    label: AuditLabel = Field(description="critical, major, minor, trivial, not_an_issue or skip")


class RecordedOut(BaseModel):
    """The label as recorded, and only now the model's severity."""

    item_id: int
    label: str
    model_severity: str
    agreement: str
    words: str


def label_item(console: Console, item_id: int, label: AuditLabel, actor: Actor) -> RecordedOut:
    """Record ``actor``'s label; 409 when it was labelled already (labels are final), 404 when unknown."""
    try:
        done = audit_set.record(console.engine, item_id, label, actor.name)
    except AuditError as exc:
        raise HTTPException(404 if "no audit item" in str(exc) else 409, str(exc)) from None
    return RecordedOut(item_id=done.item_id, label=done.label.value, model_severity=done.model_severity.value,
                       agreement=done.agreement, words=done.words())  # fmt: skip


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    auth = console.auth
    api_actor = Depends(auth.api_actor)
    per_week = console.settings.audit_per_week

    @routes.get(PAGE, include_in_schema=False)
    def audit_page(request: Request) -> HTMLResponse:
        actor = auth.page_actor(request)
        item = audit_set.next_item(console.engine, per_week)
        return console.page(
            request, "severity_audit.html", actor, item=item, labels=[label.value for label in AuditLabel],
            stats=audit_set.stats(console.engine), agreements=AGREEMENTS,
            labelled=audit_set.labelled_items(console.engine, SHOWN_LABELLED), per_week=per_week,
        )  # fmt: skip

    @routes.post(PAGE + "/{item_id}", include_in_schema=False)
    async def label_page(request: Request, item_id: int) -> Response:
        actor = auth.page_actor(request)
        form = await request.form()
        given = form.get("csrf_token")
        auth.check_csrf(actor, given if isinstance(given, str) else None)
        label = form.get("label")
        if label not in set(AuditLabel):
            return console.back(PAGE, error=f"choose one of {', '.join(AuditLabel)}")
        try:
            done = label_item(console, item_id, AuditLabel(str(label)), actor)
        except HTTPException as exc:
            return console.back(PAGE, error=str(exc.detail))
        return console.back(PAGE, done=f"item {item_id}: {done.words}")

    @routes.get("/api/v1/severity-audit/next", tags=["severity audit"], dependencies=[api_actor],
                summary="The next item to label, blind")  # fmt: skip
    def next_api() -> audit_set.BlindItem | None:
        """The next unlabelled item of the blind audit set (drawing the complete weeks not drawn yet),
        without the model's severity; null when none is waiting."""
        return audit_set.next_item(console.engine, per_week)

    refusals: dict[int | str, dict[str, Any]] = {
        404: {"description": "No such item"},
        409: {"description": "Labelled already"},
    }

    @routes.post("/api/v1/severity-audit/{item_id}", tags=["severity audit"], summary="Label an item",
                 responses=refusals)  # fmt: skip
    def label_api(item_id: int, given: LabelIn, actor: Actor = api_actor) -> RecordedOut:
        """Record the label (final), with the caller's name; the answer says what the model had rated it."""
        return label_item(console, item_id, given.label, actor)

    @routes.get("/api/v1/severity-audit/stats", tags=["severity audit"], dependencies=[api_actor],
                summary="How far the audit is")  # fmt: skip
    def stats_api() -> audit_set.AuditStats:
        """Labelled this week, waiting, and the labels against the model's severities (labelled items)."""
        return audit_set.stats(console.engine)

    @routes.get("/api/v1/severity-audit/labelled", tags=["severity audit"], dependencies=[api_actor],
                summary="The labelled items")  # fmt: skip
    def labelled_api() -> list[audit_set.LabelledItem]:
        """The newest labelled items, each label beside the model's severity."""
        return audit_set.labelled_items(console.engine)

    return routes
