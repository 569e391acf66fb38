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
import json
import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from bot import audit
from bot.config import ConfigError, Settings
from bot.feedback import canary
from bot.llm import LLMClient, LLMError, judge_model
from bot.models import ModelStatus, ModelVersion, Task, utcnow
from bot.serving import BASE_FINGERPRINT, ServedBase, check_base, load_adapters, served_base
from bot.weights import fingerprint_of
from flywheel import data, gate, golden
from flywheel.evaluate import Judge, compare
from flywheel.finetune import check_vllm_compatible
from flywheel.metrics import Costs, cost_matrix
from flywheel.spec import spec_for
from flywheel.take import take_exam

TEST_FILE = "test.jsonl"  # a run's test items, in its folder
ADAPTER_META = "reviewbot.json"  # in an adapter's folder: the base weights it was trained on


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
    """Check that vLLM can load the adapter (and that it serves the base weights ``base_model``
    the adapter was trained on), load it under its folder's name, and record it as a candidate.
    Raises ``AdapterIncompatible``, ``AdapterMismatch`` or ``LLMRejected`` (nothing recorded) when it
    cannot."""
    check_vllm_compatible(adapter_dir, max_rank)
    name = adapter_dir.name
    trained_on = prepare_for_resolver(adapter_dir, base_model, await served_base(student), student.base_url)
    await student.load_lora_adapter(name, str(adapter_dir.resolve()))
    version = ModelVersion(
        task=task.value,
        adapter_name=name,
        path=str(adapter_dir.resolve()),
        base_model=base_model,
        metrics={**(metrics or {}), **({BASE_FINGERPRINT: trained_on} if trained_on else {})},
    )
    session.add(version)
    session.commit()
    session.refresh(version)
    return version


def prepare_for_resolver(adapter_dir: Path, base_model: str, served: ServedBase, where: str) -> str | None:
    """Check the adapter's base weights against the served ones and make every vLLM replica able to
    load it by name; returns the fingerprint of the weights it was trained on (None: not readable).

    Replicas behind a balancer each load an adapter the first time a request names it, through
    vLLM's filesystem resolver over the shared adapters folder: a POST of ``load_lora_adapter``
    reaches one replica only, and a list of replicas to load on each would go stale as replicas
    scale and restart. The resolver loads ``FOLDER/NAME`` only when its ``adapter_config.json`` names
    the server's own ``--model`` as ``base_model_name_or_path``, so that field is set to it here;
    where training read the weights from, and their fingerprint, stay in ``reviewbot.json``."""
    meta_path, config_path = adapter_dir / ADAPTER_META, adapter_dir / "adapter_config.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    config = json.loads(config_path.read_text())
    trained_on = meta.get(BASE_FINGERPRINT) or fingerprint_of(base_model)
    check_base(adapter_dir.name, trained_on, served, where)
    meta = {
        "base_model_name_or_path": meta.get("base_model_name_or_path", config.get("base_model_name_or_path")),
        "base_weights": meta.get("base_weights", base_model),
        BASE_FINGERPRINT: trained_on,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if served.root and config.get("base_model_name_or_path") != served.root:
        config["base_model_name_or_path"] = served.root
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return str(trained_on) if trained_on else None


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
    canary_share: float = 0.0,
) -> ModelVersion:
    """Make ``name`` the version its task uses; the one active before is retired. ``verdict`` is the
    gate's, from both models scored on the same items (a run's test part, or ``judge``); ``force``
    skips it. With ``actor`` (an admin's promotion) the audit entry is written in its transaction.
    With a ``canary_share`` it is first a canary on that share of merge requests, the version in use
    serving the rest (``bot.feedback.canary`` decides); promoting a running canary ends it early:
    it takes all traffic (it passed the gate when its canary began)."""
    version = find(session, name)
    if version.status == ModelStatus.ACTIVE:
        return version
    if version.status == ModelStatus.CANARY:
        said = f"took all traffic early: promoted by {actor or 'the flywheel'}"
        return canary.take_all_traffic(session, version, f"{said} ({reason})" if reason else said, actor)
    _refuse_rolled_back_canary(version, force)
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
        if canary_share > 0:  # the version in use stays, for the rest of the merge requests
            after.update({"active": previous, "canary": name, "canary_share": canary_share})
        audit.record(session, actor, "model.promote", f"{version.task} model", {"active": previous}, after)
    if canary_share > 0:
        return canary.start(session, version, canary_share)
    canary.end_undecided(session, version)
    return _activate(session, version, current)


def _refuse_rolled_back_canary(version: ModelVersion, force: bool) -> None:
    """A version its canary rolled back was worse live: it is never served again unless forced."""
    ended, promoted = version.canary_ended_at, version.promoted_at  # a full promotion ends it at promoted_at
    as_canary = ended is not None and (promoted is None or promoted < ended)
    if version.status == ModelStatus.ROLLED_BACK and as_canary and not force:
        raise PromotionRefused(
            f"{version.adapter_name} was rolled back as a canary ({version.canary_reason}); "
            "only a forced promotion, with a reason, serves it again"
        )


def admin_promote(
    settings: Settings,
    session: Session,
    actor: str,
    name: str,
    *,
    force: bool = False,
    reason: str = "",
    with_canary: bool = True,
) -> Promotion:
    """An admin's promotion of ``name``: unless forced, ``judge`` compares it with the model in use
    now and the gate decides; a forced one needs a ``reason``. Forced or not, it is first a canary
    on ``REVIEWBOT_CANARY_SHARE`` of merge requests unless ``with_canary`` is off; a running canary
    promoted takes all traffic at once. Raises ``ReasonRequired``, ``UnknownVersion``,
    ``PromotionRefused``, ``ComparisonFailed``, ``ConfigError`` or ``DataError``, with nothing changed."""
    reason = reason.strip()
    if force and not reason:
        raise ReasonRequired("a forced promotion needs a reason: it skips the gate; the audit log keeps why")
    version = find(session, name)
    current = active_version(session, Task(version.task))
    previous = current.adapter_name if current else None
    if version.status == ModelStatus.ACTIVE:
        return Promotion(version, previous, None, changed=False)
    _refuse_rolled_back_canary(version, force)
    judged = not force and version.status != ModelStatus.CANARY
    verdict = _judge_now(settings, session, name) if judged else None
    if settings.eval_base_url is not None and (verdict is None or verdict.passed):
        _load_into_production(settings, version)
    share = settings.canary_share if with_canary else 0.0
    promoted = promote(session, name, verdict, force=force, actor=actor, reason=reason, canary_share=share)
    return Promotion(promoted, previous, verdict, changed=True)


def _load_into_production(settings: Settings, version: ModelVersion) -> None:
    """Judged on the evaluation vLLM (``REVIEWBOT_EVAL_BASE_URL``), the version is loaded into the
    one reviews use before they name it, its base weights checked against that one's."""

    async def load() -> None:
        async with LLMClient.student(settings) as production:
            await load_adapters(production, [version])

    try:
        asyncio.run(load())
    except LLMError as exc:  # AdapterMismatch included
        raise PromotionRefused(f"cannot load {version.adapter_name} into the production vLLM: {exc}") from exc


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
        student = await stack.enter_async_context(LLMClient.evaluation(settings))
        await load_adapters(student, [v for v in (version, current) if v is not None])  # after a restart
        judge = (
            Judge(await stack.enter_async_context(LLMClient.judge(settings)), judge_model(settings))
            if settings.teacher_base_url
            else None
        )
        answers = {
            (model, part): (await take_exam(student, model, spec, examples)).attempts
            for model in (name, in_use)
            for part, examples in (("test", items), ("golden", gold.examples))
        }
        test = await compare(spec, answers[name, "test"], answers[in_use, "test"], judge, costs)
        gilt = await compare(spec, answers[name, "golden"], answers[in_use, "golden"], judge, costs)
    golden_scores = gate.GoldenScores(gold.version, gilt[0].value, gilt[1].value)
    return gate.judge((name, test[0]), (in_use, test[1]), rule, golden_scores)


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
    admin's rollback: the CLI, the console) the audit entry is written in its transaction. A running
    canary is what is rolled back first (the latest promotion): the active version keeps all traffic."""
    trial = canary.running(session, task)
    if trial is not None:
        canary.roll_back(session, trial, f"rolled back by {actor or 'an admin'}", actor)
        return active_version(session, task)
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
    """An admin's rollback of ``task`` (its canary first), with its audit entry; ``LookupError`` when
    none is active."""
    current = canary.running(session, task) or active_version(session, task)
    rolled_back = current.adapter_name if current else ""
    return Rollback(rolled_back, rollback(session, task, actor=actor))
