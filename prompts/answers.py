"""JSON answer schemas of the prompts; strict (no extra keys) so hosted APIs accept them as strict."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class RateAnswer(BaseModel):
    """Answer of ``rate.j2``: the severity of one review comment on one piece of code."""

    model_config = ConfigDict(extra="forbid")

    issue_type: Literal["critical", "major", "minor", "trivial"]
