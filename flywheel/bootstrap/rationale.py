"""The reference explanation of a finding: why its rule matters, from the analyzer's own
documentation (ruff's "Why is this bad?" section; bandit's issue text and the CWE it names),
trimmed to whole sentences within the explanation answer's length limit."""

from __future__ import annotations

import re

from flywheel.bootstrap.analyzers import Finding, ruff_explanations
from flywheel.bootstrap.mapping import SeverityMap
from prompts.answers import ExplainAnswer

LIMIT = int(ExplainAnswer.model_json_schema()["properties"]["explanation"]["maxLength"])
_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)
_FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")  # [text](url) -> text
_REFERENCE = re.compile(r"\[([^\]]+)\](?!\()")  # [PEP 8] -> PEP 8
_LIST = re.compile(r"^\s*(?:[-*]|\d+\.) ", re.MULTILINE)  # the details start where a list does
_QUOTE = re.compile(r"^> ?", re.MULTILINE)
# Sentences about ruff itself (its settings), not about the code.
_ABOUT_THE_TOOL = re.compile(
    r"\bthis rule\b|\bruff\b|\bconfigur|\bsettings?\b|\boptions?\b|`lint\.", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")


def rationale(finding: Finding, table: SeverityMap) -> str:
    """Why the finding's rule matters, in at most ``LIMIT`` characters; "" when nothing documents it."""
    if finding.analyzer == "ruff":
        text = _ruff_reason(ruff_explanations().get(finding.rule, ""))
    else:
        text = finding.message.strip()
        name = table.cwe_names.get(finding.cwe) if finding.cwe else None
        if finding.cwe:
            weakness = f"{name} (CWE-{finding.cwe})" if name else f"CWE-{finding.cwe}"
            text = f"{text.rstrip('.')}. The weakness: {weakness}."
    return trimmed(text)


def _ruff_reason(markdown: str) -> str:
    sections = dict(_sections(markdown))
    body = sections.get("Why is this bad?") or sections.get("What it does") or ""
    body = _FENCED.sub(" ", body)
    body = _LIST.split(body, 1)[0]
    body = _QUOTE.sub("", _REFERENCE.sub(r"\1", _LINK.sub(r"\1", body)))
    sentences = _SENTENCE_END.split(" ".join(body.split()))
    return " ".join(s for s in sentences if not _ABOUT_THE_TOOL.search(s) and not s.endswith(":"))


def _sections(markdown: str) -> list[tuple[str, str]]:
    heads = list(_SECTION.finditer(markdown))
    return [
        (head[1].strip(), markdown[head.end() : heads[i + 1].start() if i + 1 < len(heads) else None])
        for i, head in enumerate(heads)
    ]


def trimmed(text: str, limit: int = LIMIT) -> str:
    """Whole sentences of ``text`` up to ``limit`` characters; a first sentence longer than that is
    cut at a word, with an ellipsis."""
    kept = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        candidate = f"{kept} {sentence}".strip()
        if len(candidate) > limit:
            break
        kept = candidate
    if kept or not text.strip():
        return kept
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
