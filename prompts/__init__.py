"""Prompt templates (Jinja2, ``*.j2``) and the pydantic models of their JSON answers.

Every conversation starts with the same system message (``system.j2``), so vLLM's prefix cache
serves it once for all calls of a review. The templates ship inside the wheel as package data.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from openai.types.chat import ChatCompletionMessageParam

from prompts.answers import MAX_ISSUES_PER_CHUNK, ExplainAnswer, FindAnswer, RateAnswer

__all__ = ["MAX_ISSUES_PER_CHUNK", "ExplainAnswer", "FindAnswer", "RateAnswer", "conversation", "render"]

_env = Environment(
    loader=PackageLoader("prompts", ""),
    undefined=StrictUndefined,  # a missing variable is a bug, not an empty string
    keep_trailing_newline=True,
    autoescape=False,  # prompts are plain text for a model, not HTML
)


def render(template: str, **values: Any) -> str:
    """Render ``prompts/<template>.j2`` with ``values``."""
    return _env.get_template(f"{template}.j2").render(**values)


def conversation(template: str, **values: Any) -> list[ChatCompletionMessageParam]:
    """The shared system message, then ``template`` rendered as the user's message."""
    return [
        {"role": "system", "content": render("system")},
        {"role": "user", "content": render(template, **values)},
    ]
