"""Which served model (base model or adapter name) answers each task."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.config import ConfigError, Settings
from bot.llm import LLMClient, LLMRejected
from bot.models import ModelStatus, ModelVersion, Task
from bot.weights import fingerprint_of

SERVED = (ModelStatus.ACTIVE, ModelStatus.CANARY)  # the versions reviews use: vLLM must serve them
BASE_FINGERPRINT = "base_fingerprint"  # ModelVersion.metrics key: the base weights it was trained on


def served_models(
    settings: Settings, engine: sa.Engine | None = None, merge_request: tuple[int, int] | None = None
) -> dict[Task, str]:
    """Per task: the adapter promoted in the database, else ``REVIEWBOT_TASK_MODELS``, else the base model.
    For a ``merge_request`` (project id, number) its task's canary instead, when one runs and the merge
    request is in its share (``in_canary``)."""
    unknown = set(settings.task_models) - {t.value for t in Task}
    if unknown:
        raise ConfigError(
            f"REVIEWBOT_TASK_MODELS: unknown task {sorted(unknown)}; tasks are {[t.value for t in Task]}"
        )
    models = {task: settings.task_models.get(task.value, settings.student_model) for task in Task}
    if engine is not None and sa.inspect(engine).has_table("modelversion"):
        with Session(engine) as session:
            served = session.exec(select(ModelVersion).where(col(ModelVersion.status).in_(SERVED))).all()
        for version in sorted(served, key=lambda v: v.status == ModelStatus.CANARY):  # a canary wins
            if version.status == ModelStatus.ACTIVE or (
                merge_request is not None and in_canary(version, *merge_request)
            ):
                models[Task(version.task)] = version.adapter_name
    return models


def in_canary(version: ModelVersion, project_id: int, mr_number: int) -> bool:
    """Whether the canary ``version`` reviews this merge request: a hash of the canary's name, the
    project and the number, read as a fraction, below its share. One merge request sees one model for
    the whole canary (its pushes are compared on one side); the name in the hash gives each canary
    its own draw of merge requests, so no project is every canary's test bed."""
    digest = hashlib.sha256(f"{version.adapter_name}:{project_id}:{mr_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < (version.canary_share or 0.0)


class AdapterMismatch(LLMRejected):
    """The adapter was trained on other base weights than the server serves: loading it is refused."""


@dataclass(frozen=True)
class ServedBase:
    """What the server serves as the base model: where from (vLLM's ``--model``) and, when its
    weights are readable here, their fingerprint."""

    root: str | None
    fingerprint: str | None


async def served_base(student: LLMClient) -> ServedBase:
    root = await student.base_model_root()
    return ServedBase(root, fingerprint_of(root) if root else None)


def check_base(name: str, trained_on: str | None, served: ServedBase, where: str) -> None:
    """Raise ``AdapterMismatch`` when the adapter's recorded base fingerprint and the served one are
    both known and differ. Unknown on either side (weights on another host) is no evidence."""
    if trained_on and served.fingerprint and trained_on != served.fingerprint:
        raise AdapterMismatch(
            f"adapter {name!r} was trained on base weights {trained_on}, but {where} serves "
            f"{served.root} with base weights {served.fingerprint}: refusing to load it; serve the "
            "weights it was trained on, or train a new adapter on these"
        )


async def load_adapters(student: LLMClient, versions: Sequence[ModelVersion]) -> list[str]:
    """Load each of ``versions`` that ``student`` does not list, after checking its base weights
    against the served ones; returns the names loaded. The listing is only a hint: behind a
    balancer it comes from one replica, and a replica with vLLM's filesystem resolver lists an
    adapter only after a request named it; a load that finds the adapter there already succeeds."""
    served = set(await student.list_models())
    missing = [v for v in versions if v.adapter_name not in served]
    if not missing:
        return []
    base = await served_base(student)
    for version in missing:
        check_base(version.adapter_name, base_fingerprint(version), base, student.base_url)
        await student.load_lora_adapter(version.adapter_name, version.path)
    return [v.adapter_name for v in missing]


def base_fingerprint(version: ModelVersion) -> str | None:
    """The fingerprint of the base weights ``version`` was trained on, recorded at registration."""
    value = version.metrics.get(BASE_FINGERPRINT)
    return value if isinstance(value, str) else None


async def load_missing_adapters(engine: sa.Engine, student: LLMClient) -> list[str]:
    """Load the active and canary adapters that the vLLM server does not serve (it was restarted
    since they were promoted); returns their names. Without this, a restart would fail every review
    call on a server without the filesystem resolver."""
    with Session(engine) as session:
        served = session.exec(select(ModelVersion).where(col(ModelVersion.status).in_(SERVED))).all()
    return await load_adapters(student, served) if served else []
