"""Acceptance per model version as a picture: does each new adapter get more 👍 and fewer corrections?

One drawing, two outputs: a file for ``reviewbot feedback stats --plot`` and SVG text the console
puts inline in its page. The figure is made without pyplot (no global state), so the console's
threads can draw at once.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHOWN = ("thumbs_up", "corrected", "dismissed", "addressed")
SVG, XLINK = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"


def plot_acceptance(rows: Iterable[dict[str, Any]], out: Path) -> Path:
    """Bars of the 👍, corrected, dismissed and addressed rates per model version (in the order the
    versions first appear), from ``feedback_stats`` rows, weighted by their findings; the file's
    type is its suffix's (PNG, SVG, PDF)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _acceptance_figure(rows).savefig(out, dpi=100)
    return out


def acceptance_svg(rows: Iterable[dict[str, Any]]) -> str:
    """``plot_acceptance``'s drawing as an ``<svg>`` element to put inline in an HTML page."""
    buffer = io.BytesIO()
    _acceptance_figure(rows).savefig(buffer, format="svg", metadata={"Date": None})
    return inline_svg(buffer.getvalue())


def inline_svg(document: bytes) -> str:
    """Matplotlib's SVG file as an element for a page whose Content-Security-Policy forbids inline
    styles: no XML prolog, doctype, metadata or comments, its ``<style>`` rule and each ``style``
    attribute turned into presentation attributes (which the policy allows), text escaped anew."""
    ET.register_namespace("", SVG)
    ET.register_namespace("xlink", XLINK)
    root = ET.fromstring(document)  # matplotlib's own output: no untrusted XML is parsed here
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in (f"{{{SVG}}}metadata", f"{{{SVG}}}style"):
                parent.remove(child)
    for element in root.iter():
        for declaration in element.attrib.pop("style", "").split(";"):
            name, _, value = declaration.partition(":")
            if name.strip():
                element.set(name.strip(), value.strip())
    root.set("stroke-linejoin", "round")  # what matplotlib's <style> said for every element
    root.set("stroke-linecap", "butt")
    return ET.tostring(root, encoding="unicode")


def _acceptance_figure(rows: Iterable[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        version = totals[row["model_version"]]
        version["findings"] += row["findings"]
        for name in SHOWN:
            version[name] += row[f"{name}_rate"] * row["findings"]
    versions = list(totals)
    figure = Figure(figsize=(max(5, 1.6 * len(versions) + 2), 4))
    axes = figure.subplots()
    width = 0.8 / len(SHOWN)
    for index, name in enumerate(SHOWN):
        rates = [totals[v][name] / max(totals[v]["findings"], 1) for v in versions]
        positions = [i + (index - (len(SHOWN) - 1) / 2) * width for i in range(len(versions))]
        axes.bar(positions, rates, width, label=name.replace("_", " "))
    axes.set_xticks(range(len(versions)))
    axes.set_xticklabels([f"{v}\n({int(totals[v]['findings'])} findings)" for v in versions], fontsize=8)
    axes.set_ylabel("share of findings")
    axes.set_ylim(0, 1)
    axes.set_title("Reviewers' reactions per model version")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
