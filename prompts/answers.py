"""JSON answer schemas of the prompts; strict (no extra keys) so hosted APIs accept them as strict.

Length and count bounds are part of the schema, so constrained decoding always ends: a model cannot
run a string or a list past them and get cut off by ``max_tokens``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ISSUES_PER_CHUNK = 5


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CandidateIssue(Strict):
    line: int = Field(ge=0, le=10_000_000)
    side: Literal["new", "old"]
    title: str = Field(min_length=1, max_length=100)
    review: str = Field(min_length=1, max_length=600)


class FindAnswer(Strict):
    """Answer of ``find.j2``: the issues a reviewer sees in one chunk of a diff."""

    issues: list[CandidateIssue] = Field(max_length=MAX_ISSUES_PER_CHUNK)


class RateAnswer(Strict):
    """Answer of ``rate.j2`` (the seed's TASK_PROMPT): the severity of one review comment."""

    issue_type: Literal["critical", "major", "minor", "trivial"]


class ExplainAnswer(Strict):
    """Answer of ``explain.j2``: why the issue has its severity."""

    explanation: str = Field(min_length=1, max_length=600)
