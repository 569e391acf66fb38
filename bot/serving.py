"""Which served model (base model or adapter name) answers each task."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, select

from bot.config import ConfigError, Settings
from bot.llm import LLMClient
from bot.models import ModelStatus, ModelVersion, Task


def served_models(settings: Settings, engine: sa.Engine | None = None) -> dict[Task, str]:
    """Per task: the adapter promoted in the database, else ``REVIEWBOT_TASK_MODELS``, else the base model."""
    unknown = set(settings.task_models) - {t.value for t in Task}
    if unknown:
        raise ConfigError(
            f"REVIEWBOT_TASK_MODELS: unknown task {sorted(unknown)}; tasks are {[t.value for t in Task]}"
        )
    models = {task: settings.task_models.get(task.value, settings.student_model) for task in Task}
    if engine is not None and sa.inspect(engine).has_table("modelversion"):
        with Session(engine) as session:
            active = session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)).all()
        for version in active:
            models[Task(version.task)] = version.adapter_name
    return models


async def load_missing_adapters(engine: sa.Engine, student: LLMClient) -> list[str]:
    """Load the active adapters that the vLLM server does not serve (it was restarted since they
    were promoted); returns their names. Without this, a restart would fail every review call."""
    with Session(engine) as session:
        active = session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)).all()
    if not active:
        return []
    served = set(await student.list_models())
    missing = [v for v in active if v.adapter_name not in served]
    for version in missing:
        await student.load_lora_adapter(version.adapter_name, version.path)
    return [v.adapter_name for v in missing]
