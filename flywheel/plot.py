"""A flywheel run as a picture: held-out and golden scores, exam score and the teacher's grade per round.

One drawing, two outputs: a file for ``reviewbot flywheel report --out`` (PNG or SVG, by its suffix)
and an SVG element the console inlines in the run's page. The figure is built without pyplot (no
global state), so the server may draw two at once.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from bot.models import FlywheelRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# What matplotlib's stylesheet sets on every element; as attributes of the root they are inherited.
ROOT_STROKE = {"stroke-linejoin": "round", "stroke-linecap": "butt"}


def _figure(run: FlywheelRun) -> Figure:
    from matplotlib.figure import Figure

    rounds = [r for r in run.rounds if r.get("round", 0) > 0]
    baseline = run.rounds[0] if run.rounds else None
    figure = Figure(figsize=(7, 4), layout="tight")
    axes = figure.subplots()
    if baseline is not None:
        axes.axhline(baseline["heldout"], color="grey", linestyle="--", label=f"before: {baseline['model']}")
    numbers = [r["round"] for r in rounds]
    held = [r for r in run.rounds if "heldout" in r]  # round 0 too: where the run started from
    axes.plot([r["round"] for r in held], [r["heldout"] for r in held], "o-", label="dev score (held-out)")
    gold = [r for r in run.rounds if r.get("golden") is not None]  # runs with a golden set
    if gold:
        label = f"golden set v{gold[0]['golden_version']}"
        axes.plot([r["round"] for r in gold], [r["golden"] for r in gold], "D-", label=label)
    axes.plot(numbers, [r["exam_score"] for r in rounds], "s--", label="exam score")
    axes.plot(numbers, [r["teacher_score"] / 10 for r in rounds], "^:", label="teacher's grade / 10")
    for entry in rounds:
        point = (entry["round"], entry["heldout"])
        axes.annotate(entry["model"], point, xytext=(0, 6), textcoords="offset points", ha="center", size=8)
    axes.set_xlabel("round")
    axes.set_ylabel("score")
    axes.set_ylim(0, 1.05)
    axes.set_xticks([r["round"] for r in held])
    axes.set_title(f"flywheel run {run.id}: {run.task} ({run.status})")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def plot_run(run: FlywheelRun, out: Path) -> Path:
    """Write the run's scores per round to ``out``, a PNG or an SVG by its suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _figure(run).savefig(out, dpi=100)
    return out


def run_svg(run: FlywheelRun) -> str:
    """The run's plot as an ``<svg>`` element to inline in a page: no XML prolog, no metadata or
    comments, and no ``style`` (the console's CSP refuses inline styles: they become presentation
    attributes). Text is drawn as glyph paths, and what remains is serialised with XML escaping."""
    buffer = io.BytesIO()
    _figure(run).savefig(buffer, format="svg", metadata={"Date": None})
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(buffer.getvalue())  # comments, the prolog and the doctype are dropped
    _drop(root, {f"{{{SVG_NS}}}metadata", f"{{{SVG_NS}}}style"})
    for element in root.iter():
        _unstyle(element)
    root.attrib.update(ROOT_STROKE)
    root.set("role", "img")
    root.set("aria-label", f"flywheel run {run.id}: scores per round")
    return ET.tostring(root, encoding="unicode")


def _drop(root: ET.Element, tags: set[str]) -> None:
    for parent in list(root.iter()):
        for child in [c for c in parent if c.tag in tags]:
            parent.remove(child)


def _unstyle(element: ET.Element) -> None:
    """``style="fill: #fff; stroke-width: 0.8"`` → ``fill="#fff" stroke-width="0.8"``."""
    style = element.attrib.pop("style", "")
    for declaration in style.split(";"):
        name, _, value = declaration.partition(":")
        if name.strip() and value.strip():
            element.set(name.strip(), value.strip())
