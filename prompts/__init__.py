"""Prompt templates (Jinja2, ``*.j2``) and the pydantic models of their JSON answers.

Every conversation starts with the same system message (``system.j2``), so vLLM's prefix cache
serves it once for all calls of a review. The templates ship inside the wheel as package data.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from openai.types.chat import ChatCompletionMessageParam

from prompts.answers import MAX_ISSUES_PER_CHUNK, ExplainAnswer, FindAnswer, RateAnswer

__all__ = [
    "MAX_ISSUES_PER_CHUNK",
    "ExplainAnswer",
    "FindAnswer",
    "RateAnswer",
    "conversation",
    "data_block",
    "render",
]

MAX_DATA_CHARS = 20_000  # untrusted text longer than this is cut, visibly, before it reaches a prompt


def data_block(text: object, label: str = "data", limit: int = MAX_DATA_CHARS) -> str:
    """Untrusted text (a diff, a file name, a reviewer's words, another model's answer) as a fenced
    block the content cannot close: the fence is longer than any run of backticks inside it, and the
    label says it is data. The system prompt tells the model that instructions inside such blocks are
    data, not instructions. Deterministic, so the same input gives the same prompt (prefix caching,
    and the flywheel trains on exactly what the review pipeline asks)."""
    body = str(text)
    if len(body) > limit:
        body = body[:limit] + f"\n[… {len(body) - limit} more characters cut]"
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{label}\n{body}\n{fence}"


_env = Environment(
    loader=PackageLoader("prompts", ""),
    undefined=StrictUndefined,  # a missing variable is a bug, not an empty string
    keep_trailing_newline=True,
    autoescape=False,  # prompts are plain text for a model, not HTML
)
_env.filters["data_block"] = data_block


def render(template: str, **values: Any) -> str:
    """Render ``prompts/<template>.j2`` with ``values``."""
    return _env.get_template(f"{template}.j2").render(**values)


def conversation(template: str, **values: Any) -> list[ChatCompletionMessageParam]:
    """The shared system message, then ``template`` rendered as the user's message."""
    return [
        {"role": "system", "content": render("system")},
        {"role": "user", "content": render(template, **values)},
    ]
