"""Prompt templates (Jinja2, ``*.j2``) and the pydantic models of their JSON answers.

The templates ship inside the wheel as package data, so an installed reviewbot finds them.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from prompts.answers import RateAnswer

__all__ = ["RateAnswer", "render"]

_env = Environment(
    loader=PackageLoader("prompts", ""),
    undefined=StrictUndefined,  # a missing variable is a bug, not an empty string
    keep_trailing_newline=True,
    autoescape=False,  # prompts are plain text for a model, not HTML
)


def render(template: str, **values: Any) -> str:
    """Render ``prompts/<template>.j2`` with ``values``."""
    return _env.get_template(f"{template}.j2").render(**values)
