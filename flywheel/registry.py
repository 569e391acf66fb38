"""Step 5's output: adapter versions. Each gets a name never used before (``severity-v7``: vLLM can
serve stale prefix-cache blocks after an adapter is reloaded under the same name), is loaded into the
running vLLM, and becomes the one the review pipeline uses for its task only when promoted.

Promotion follows the ``gate``'s verdict, made from both models' answers on the same items: a run's
test part at the end of the run, or, for ``models promote``, fresh answers through vLLM (``judge``)
on that run's test items and the admin's golden set. Scores recorded on different sets are never
compared.

An admin's promotion or rollback (``models promote/rollback``, the console and its API all call
``admin_promote`` and ``admin_rollback``) writes its audit entry in the change's own transaction; a
forced promotion needs a reason, kept in that entry.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from bot import audit
from bot.config import ConfigError, Settings
from bot.llm import LLMClient, LLMError
from bot.models import ModelStatus, ModelVersion, Task, utcnow
from flywheel import data, gate, golden
from flywheel.data import Example
from flywheel.evaluate import Score, score
from flywheel.finetune import check_vllm_compatible
from flywheel.metrics import Costs, cost_matrix
from flywheel.spec import TaskSpec, spec_for
from flywheel.take import take_exam

TEST_FILE = "test.jsonl"  # a run's test items, in its folder


class PromotionRefused(ValueError):
    """The candidate does not pass the gate; the message gives the figures and what to do."""


class UnknownVersion(LookupError):
    """No model version has that name."""


class ReasonRequired(ValueError):
    """A forced promotion without a reason: the audit log must say why the gate was skipped."""


class ComparisonFailed(RuntimeError):
    """The candidate and the model in use could not answer (the models are not served by vLLM)."""


@dataclass(frozen=True)
class Promotion:
    """What an admin's promotion did: the version, the one in use before (None: the base model),
    the gate's verdict (None when forced or already active), and whether anything changed."""

    version: ModelVersion
    previous: str | None
    verdict: gate.Verdict | None
    changed: bool


@dataclass(frozen=True)
class Rollback:
    """What an admin's rollback did: the version taken back, and the one in use now (None: the base
    model)."""

    rolled_back: str
    restored: ModelVersion | None


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
    verdict: gate.Verdict | None = None,
    *,
    force: bool = False,
    actor: str | None = None,
    reason: str = "",
) -> ModelVersion:
    """Make ``name`` the version its task uses; the one active before is retired. ``verdict`` is the
    gate's, from both models scored on the same items (a run's test part, or ``judge``); ``force``
    skips it. With ``actor`` (an admin's promotion) the audit entry is written in its transaction."""
    version = find(session, name)
    if version.status == ModelStatus.ACTIVE:
        return version
    if not force:
        if verdict is None:
            raise PromotionRefused(f"{name} was not compared with the model in use; use --force to skip")
        if not verdict.passed:
            raise PromotionRefused(verdict.reason)
    current = active_version(session, Task(version.task))
    if actor is not None:
        after: dict[str, Any] = {"active": name, "forced": force}
        after.update({"reason": reason} if reason else {})
        after.update({"gate": verdict.reason} if verdict is not None else {})
        previous = current.adapter_name if current else None
        audit.record(session, actor, "model.promote", f"{version.task} model", {"active": previous}, after)
    return _activate(session, version, current)


def admin_promote(
    settings: Settings, session: Session, actor: str, name: str, *, force: bool = False, reason: str = ""
) -> Promotion:
    """An admin's promotion of ``name``: unless forced, ``judge`` compares it with the model in use
    now and the gate decides; a forced one needs a ``reason``. Raises ``ReasonRequired``,
    ``UnknownVersion``, ``PromotionRefused``, ``ComparisonFailed``, ``ConfigError`` or ``DataError``,
    with nothing changed."""
    reason = reason.strip()
    if force and not reason:
        raise ReasonRequired("a forced promotion needs a reason: it skips the gate; the audit log keeps why")
    version = find(session, name)
    current = active_version(session, Task(version.task))
    previous = current.adapter_name if current else None
    if version.status == ModelStatus.ACTIVE:
        return Promotion(version, previous, None, changed=False)
    verdict = None if force else _judge_now(settings, session, name)
    promoted = promote(session, name, verdict, force=force, actor=actor, reason=reason)
    return Promotion(promoted, previous, verdict, changed=True)


def _judge_now(settings: Settings, session: Session, name: str) -> gate.Verdict:
    try:
        costs = cost_matrix(settings.severity_costs)
    except ValueError as exc:
        raise ConfigError(f"REVIEWBOT_SEVERITY_COSTS: {exc}") from None
    try:
        return asyncio.run(judge(settings, session, name, gate.Rule.from_settings(settings), costs))
    except LLMError as exc:
        raise ComparisonFailed(
            f"cannot compare {name} with the model in use: the models must be served by vLLM "
            f"({exc}); forcing the promotion skips the comparison"
        ) from exc


def find(session: Session, name: str) -> ModelVersion:
    version = session.exec(select(ModelVersion).where(ModelVersion.adapter_name == name)).first()
    if version is None:
        raise UnknownVersion(f"no model version named {name!r}; see `reviewbot models list`")
    return version


async def judge(
    settings: Settings, session: Session, name: str, rule: gate.Rule, costs: Costs
) -> gate.Verdict:
    """A manual promotion's gate: ``name`` and the model in use, both served by vLLM, answer the
    test items of the run that made ``name`` (the golden set when that file is gone) and the golden
    set, and the same gate as a run's decides."""
    version = find(session, name)
    task = Task(version.task)
    gold = golden.newest(session, task)
    if gold is None:
        raise PromotionRefused(f"{golden.missing_message(task)}, or use --force")
    current = active_version(session, task)
    in_use = current.adapter_name if current else settings.student_model
    test_file = settings.flywheel_dir / "runs" / str(version.metrics.get("run_id")) / TEST_FILE
    spec = spec_for(task)
    items = data.read_jsonl(test_file, spec) if test_file.is_file() else gold.examples
    async with AsyncExitStack() as stack:
        student = await stack.enter_async_context(LLMClient.student(settings))
        teacher = (
            await stack.enter_async_context(LLMClient.teacher(settings))
            if settings.teacher_base_url
            else None
        )
        scores = [
            await _measure(student, teacher, settings, spec, model, examples, costs)
            for model in (name, in_use)
            for examples in (items, gold.examples)
        ]
    golden_scores = gate.GoldenScores(gold.version, scores[1].value, scores[3].value)
    return gate.judge((name, scores[0]), (in_use, scores[2]), rule, golden_scores)


async def _measure(
    student: LLMClient,
    teacher: LLMClient | None,
    settings: Settings,
    spec: TaskSpec,
    model: str,
    examples: list[Example],
    costs: Costs,
) -> Score:
    sitting = await take_exam(student, model, spec, examples)
    return await score(
        spec, sitting.attempts, teacher, settings.teacher_model or "", random.Random(1),
        settings.reference_model, costs,
    )  # fmt: skip


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


def rollback(session: Session, task: Task, *, actor: str | None = None) -> ModelVersion | None:
    """Mark the active version rolled back and bring back the one active before it (None: the base
    model). A rolled-back version is never brought back by a later rollback. With ``actor`` (an
    admin's rollback: the CLI, the console) the audit entry is written in its transaction."""
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
    if actor is not None:
        after = {"active": earlier.adapter_name if earlier else None, "rolled_back": current.adapter_name}
        audit.record(session, actor, "model.rollback", f"{task.value} model",
                     {"active": current.adapter_name}, after)  # fmt: skip
    session.commit()
    return earlier


def admin_rollback(session: Session, actor: str, task: Task) -> Rollback:
    """An admin's rollback of ``task``, with its audit entry; ``LookupError`` when none is active."""
    current = active_version(session, task)
    rolled_back = current.adapter_name if current else ""
    return Rollback(rolled_back, rollback(session, task, actor=actor))
