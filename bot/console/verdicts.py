"""The console's verdicts: how reviewers received each model version's findings.

- ``table#verdicts``: the rows of ``reviewbot feedback stats`` (``bot.feedback.stats.acceptance``);
- ``#confusion``: one model version's severities against the reviewers' ``/severity`` and
  ``/dismiss`` (``severity_confusion``, as ``reviewbot feedback confusion``), said in words below;
- ``#trend``: ``reviewbot feedback stats --plot``'s chart (``bot.feedback.plot``), inline SVG.

Page and ``/api/v1/verdicts`` share ``verdicts``.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from pydantic import BaseModel

from bot.console import Console
from bot.console.reviews import find_project, page_number, project_choices
from bot.feedback.plot import acceptance_svg
from bot.feedback.stats import DISMISSED, VERDICTS, acceptance, severity_confusion
from bot.models import Severity


class AcceptanceRow(BaseModel):
    """A row of ``reviewbot feedback stats``: one project, model version and severity."""

    project: str
    model_version: str
    severity: str
    findings: int
    suppressed: int
    with_feedback_rate: float
    thumbs_up_rate: float
    corrected_rate: float
    dismissed_rate: float
    addressed_rate: float


class ConfusionMatrix(BaseModel):
    """One model version: its severity (rows) -> the reviewers' verdict (a severity, or dismissed)."""

    model_version: str
    counts: dict[str, dict[str, int]]
    judged: int
    agreed: int
    over_rated: int
    under_rated: int
    dismissed: int
    disputed: int
    words: str


class Verdicts(BaseModel):
    project: str | None
    rows: list[AcceptanceRow]
    confusion: list[ConfusionMatrix]


def verdicts(engine: sa.Engine, project_path: str | None = None) -> Verdicts:
    """Acceptance rows and confusion matrices, of every project or one."""
    matrices = [ConfusionMatrix(**m.as_dict()) for m in severity_confusion(engine, project_path)]
    rows = [AcceptanceRow(**row) for row in acceptance(engine, project_path)]
    return Verdicts(project=project_path, rows=rows, confusion=matrices)


def cell_kind(said: str, given: str) -> str:
    """How a verdict compares with the model's severity: the class of its matrix cell."""
    if given == DISMISSED:
        return "dismissed"
    difference = Severity(said).rank - Severity(given).rank
    return "agreed" if difference == 0 else "over" if difference > 0 else "under"


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    auth = console.auth

    @routes.get("/admin/verdicts", include_in_schema=False)
    def verdicts_page(request: Request, project: str = "", model: str = "") -> HTMLResponse:
        actor = auth.page_actor(request)
        problems: list[str] = []
        project_id = page_number(project, "project", problems)
        found = find_project(console.engine, project_id) if project_id is not None else None
        if project_id is not None and found is None:
            problems.append(f"no project {project_id}: showing every project's verdicts")
            project_id = None
        values = _page_values(console.engine, found.path if found else None, model)
        return console.page(
            request, "verdicts.html", actor, projects=project_choices(console.engine), project=project_id,
            problems=problems + values.pop("problems"), verdicts_=VERDICTS, cell_kind=cell_kind, **values,
        )  # fmt: skip

    @routes.get("/api/v1/verdicts", tags=["verdicts"], dependencies=[Depends(auth.api_actor)])
    def get_verdicts(
        project: Annotated[int | None, Query(description="Only this project's findings (its id).")] = None,
    ) -> Verdicts:
        """Acceptance per project, model version and severity (as ``reviewbot feedback stats``), and
        each model version's severity confusion matrix (as ``reviewbot feedback confusion``)."""
        path = None
        if project is not None:
            found = find_project(console.engine, project)
            if found is None:
                raise HTTPException(404, f"no project {project}")
            path = found.path
        return verdicts(console.engine, path)

    return routes


def _page_values(engine: sa.Engine, project_path: str | None, model: str) -> dict[str, Any]:
    """The page's figures, the chosen model version's matrix, and the chart."""
    figures = verdicts(engine, project_path)
    matrices = {m.model_version: m for m in figures.confusion}
    problems = []
    if model and model not in matrices:
        problems.append(f"no verdicts on model version {model!r}: showing the newest")
    chosen = matrices.get(model) or (figures.confusion[-1] if figures.confusion else None)
    chart = acceptance_svg(row.model_dump() for row in figures.rows) if figures.rows else None
    trend = Markup(chart) if chart else None  # made here, its text escaped (bot.feedback.plot.inline_svg)
    return {"figures": figures, "matrix": chosen, "trend": trend, "problems": problems}
