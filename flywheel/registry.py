"""Step 5's output: adapter versions. Each gets a name never used before (``severity-v7``: vLLM can
serve stale prefix-cache blocks after an adapter is reloaded under the same name), is loaded into the
running vLLM, and becomes the one the review pipeline uses for its task only when promoted.

The promotion gates: a candidate's held-out score must beat the active version's (or, with none
active, the base model's, measured when the candidate was evaluated) by a margin; and, since
reviewers' labels can move that held-out set, its score on the admin's golden set (``golden``) must
not fall below the model in use's, on the same golden version, by more than the margin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from bot.llm import LLMClient
from bot.models import ModelStatus, ModelVersion, Task, utcnow
from flywheel.finetune import check_vllm_compatible


class PromotionRefused(ValueError):
    """The candidate does not pass a gate; the message gives the scores and what to do."""


@dataclass(frozen=True)
class GoldenScore:
    """A model's score on one version of its task's golden set."""

    value: float
    version: int
    model: str


def versions(session: Session, task: Task | None = None) -> Sequence[ModelVersion]:
    query = select(ModelVersion).order_by(col(ModelVersion.task), col(ModelVersion.id))
    if task is not None:
        query = query.where(ModelVersion.task == task.value)
    return session.exec(query).all()


def active_version(session: Session, task: Task) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(ModelVersion.task == task.value, ModelVersion.status == ModelStatus.ACTIVE)
    ).first()


def next_adapter_name(session: Session, task: Task, adapters_dir: Path) -> str:
    """``<task>-v<n>``, n above every version in the database and every adapter folder on disk
    (a run that failed after training left one), so no name is ever used twice."""
    pattern = re.compile(rf"^{re.escape(task.value)}-v(\d+)$")
    names = [v.adapter_name for v in versions(session, task)]
    if adapters_dir.is_dir():
        names += [p.name for p in adapters_dir.iterdir()]
    numbers = [int(m[1]) for name in names if (m := pattern.match(name))]
    return f"{task.value}-v{max(numbers, default=0) + 1}"


async def register(
    session: Session,
    student: LLMClient,
    task: Task,
    adapter_dir: Path,
    base_model: str,
    max_rank: int,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Check that vLLM can load the adapter, load it under its folder's name, and record it as a
    candidate. Raises ``AdapterIncompatible`` or ``LLMRejected`` (nothing recorded) when it cannot."""
    check_vllm_compatible(adapter_dir, max_rank)
    name = adapter_dir.name
    await student.load_lora_adapter(name, str(adapter_dir.resolve()))
    version = ModelVersion(
        task=task.value,
        adapter_name=name,
        path=str(adapter_dir.resolve()),
        base_model=base_model,
        metrics=metrics or {},
    )
    session.add(version)
    session.commit()
    session.refresh(version)
    return version


def heldout_of(version: ModelVersion) -> float | None:
    value = version.metrics.get("heldout")
    return float(value) if isinstance(value, int | float) else None


def golden_of(version: ModelVersion) -> GoldenScore | None:
    """The version's recorded score on a golden set, with that set's version."""
    value, number = version.metrics.get("golden"), version.metrics.get("golden_version")
    if isinstance(value, int | float) and isinstance(number, int):
        return GoldenScore(float(value), number, version.adapter_name)
    return None


def promote(
    session: Session,
    name: str,
    margin: float,
    *,
    force: bool = False,
    reference: float | None = None,
    golden_reference: GoldenScore | None = None,
) -> ModelVersion:
    """Make ``name`` the version its task uses; the one active before is retired. ``reference`` and
    ``golden_reference`` are the model in use's held-out and golden scores, measured on the same sets
    (a flywheel run's round 0); without them, the recorded scores decide (``_reference``,
    ``_golden_reference``). ``force`` skips both gates."""
    version = session.exec(select(ModelVersion).where(ModelVersion.adapter_name == name)).first()
    if version is None:
        raise LookupError(f"no model version named {name!r}; see `reviewbot models list`")
    if version.status == ModelStatus.ACTIVE:
        return version
    current = active_version(session, Task(version.task))
    if not force:
        _check_gate(version, margin, *_reference(version, current, reference))
        _check_golden(version, margin, golden_reference or _golden_reference(version, current))
    return _activate(session, version, current)


def _reference(
    candidate: ModelVersion, current: ModelVersion | None, given: float | None
) -> tuple[float | None, str]:
    """The score the candidate must beat and whose it is: ``given`` (the model in use, measured by
    the run), else the active version's, else the base model's as measured beside the candidate."""
    if given is not None:
        return given, f"the model in use ({current.adapter_name if current else 'base'})"
    if current is not None:
        return heldout_of(current), f"the active {current.adapter_name}"
    baseline = candidate.metrics.get("baseline")
    score = float(baseline) if isinstance(baseline, int | float) else None
    return score, f"the base model {candidate.metrics.get('baseline_model', '')}".rstrip()


def _check_gate(candidate: ModelVersion, margin: float, reference: float | None, against: str) -> None:
    """Raise PromotionRefused unless the candidate's held-out score beats ``reference`` by ``margin``
    (with no reference to beat, any score passes)."""
    name, score = candidate.adapter_name, heldout_of(candidate)
    if score is None:
        raise PromotionRefused(f"{name} has no held-out score; evaluate it first or use --force")
    if reference is not None and score < reference + margin:
        raise PromotionRefused(
            f"{name} scores {score:.3f} on the held-out set; {against} scores {reference:.3f}, "
            f"and promotion needs {reference + margin:.3f} (margin {margin:g})"
        )


def _golden_reference(candidate: ModelVersion, current: ModelVersion | None) -> GoldenScore | None:
    """The model in use's golden score: measured beside the candidate, if the model in use then is
    still in use; else the active version's own recorded score."""
    measured, version = candidate.metrics.get("golden_baseline"), candidate.metrics.get("golden_version")
    baseline_model = str(candidate.metrics.get("baseline_model") or "the base model")
    then_in_use = current is None or baseline_model == current.adapter_name
    if then_in_use and isinstance(measured, int | float) and isinstance(version, int):
        return GoldenScore(float(measured), version, baseline_model)
    return golden_of(current) if current is not None else None


def _check_golden(candidate: ModelVersion, margin: float, reference: GoldenScore | None) -> None:
    """Raise PromotionRefused unless the candidate's golden score is at most ``margin`` below the
    model in use's, both measured on the same version of the golden set."""
    name, score = candidate.adapter_name, golden_of(candidate)
    if score is None:
        raise PromotionRefused(
            f"{name} has no golden held-out score: add a golden set (`reviewbot flywheel golden add`) "
            "and train with it, or use --force"
        )
    if reference is None:
        raise PromotionRefused(
            f"{name} scores {score.value:.3f} on golden set v{score.version}, and the model in use has no "
            "golden score to compare with; a flywheel run scores it, or use --force"
        )
    if reference.version != score.version:
        raise PromotionRefused(
            f"{name} was scored on golden set v{score.version} and {reference.model} on "
            f"v{reference.version}: the scores are not comparable; run the flywheel again, or use --force"
        )
    if score.value < reference.value - margin:
        raise PromotionRefused(
            f"{name} scores {score.value:.3f} on golden set v{score.version}; {reference.model} scores "
            f"{reference.value:.3f}, and promotion needs {reference.value - margin:.3f} "
            f"(a regression of margin {margin:g} at most)"
        )


def _activate(session: Session, version: ModelVersion, current: ModelVersion | None) -> ModelVersion:
    if current is not None:
        current.status = ModelStatus.RETIRED
        session.add(current)
        session.flush()  # at most one active version per task, at every moment
    version.status = ModelStatus.ACTIVE
    version.promoted_at = utcnow()
    session.add(version)
    session.commit()
    session.refresh(version)
    return version


def rollback(session: Session, task: Task) -> ModelVersion | None:
    """Mark the active version rolled back and bring back the one active before it (None: the base
    model). A rolled-back version is never brought back by a later rollback."""
    current = active_version(session, task)
    if current is None:
        raise LookupError(f"no active {task.value} version to roll back; the base model is in use")
    earlier = session.exec(
        select(ModelVersion)
        .where(
            ModelVersion.task == task.value,
            ModelVersion.status == ModelStatus.RETIRED,
            col(ModelVersion.promoted_at) < current.promoted_at,
        )
        .order_by(col(ModelVersion.promoted_at).desc())
    ).first()
    current.status = ModelStatus.ROLLED_BACK
    session.add(current)
    session.flush()
    if earlier is not None:
        earlier.status = ModelStatus.ACTIVE
        session.add(earlier)
    session.commit()
    return earlier
