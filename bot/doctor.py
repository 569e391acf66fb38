"""``reviewbot doctor``'s checks: does this deployment work, and if not, what fixes it.

Each check is a ``Check`` row: what was looked at, its state, what was seen, and the fix when it is
not fine. A check that depends on one that failed (the database, for the projects) is skipped and
says so. Only ``FAIL`` makes the deployment unhealthy; ``WARN`` is worth a look (no delivery for
a long time), ``SKIP`` is a check that does not apply (no teacher configured).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import httpx
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import db
from bot.config import ConfigError, Settings, redact_url, settings_files
from bot.forges import DEFAULT_TOKEN_ENV, forge_for, github_api_url
from bot.forges.base import Connection, ForgeError
from bot.forges.github_app import app_slug
from bot.llm import LLMClient, LLMError
from bot.models import ForgeKind, ModelVersion, Project, Review, Source, SourceKind
from bot.queue.schedule import alive_consumers
from bot.queue.tasks import make_huey
from bot.review.pipeline import context_needed
from bot.secrets import secret_box
from bot.serving import SERVED, load_missing_adapters, served_models
from bot.sources import AppKeys

TIMEOUT_S = 5.0  # each network check: a doctor that hangs on one dead host helps nobody
_COUNT_ONLY_KEY = b"doctor"  # jobs are only counted, never read: no need to open (or make) the key
QUIET_AFTER = timedelta(days=7)  # an enabled project with no review for this long gets a warning


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    state: State
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a deployment depends on them."""
    checks = [_configuration(settings)]
    engine = db.make_engine(settings.database_url)
    try:
        database = _database(engine)
        checks.append(database)
        usable = database.state is State.OK
        checks.append(_queue(settings, engine if usable else None))
        checks.extend(asyncio.run(_models(settings, engine if usable else None)))
        if usable:
            checks.extend(_projects(settings, engine))
        checks.append(_public_url(settings))
    finally:
        engine.dispose()
    return checks


def healthy(checks: list[Check]) -> bool:
    return all(check.state is not State.FAIL for check in checks)


def _configuration(settings: Settings) -> Check:
    files = ", ".join(str(path) for path in settings_files()) or "none"
    return Check("configuration", State.OK, f"valid; data folder {settings.home}; settings files: {files}")


def _database(engine: sa.Engine) -> Check:
    where = engine.url.render_as_string(hide_password=True)
    try:
        current, head = db.schema_revisions(engine)
    except sa.exc.SQLAlchemyError as exc:
        return Check(
            "database", State.FAIL, f"{where}: {db.reason(exc)}",
            "start the database, or set REVIEWBOT_DATABASE_URL to it",
        )  # fmt: skip
    if current != head:
        state = f"at revision {current}" if current else "empty"
        return Check(
            "database", State.FAIL, f"{where} is {state}; this reviewbot needs {head}", "reviewbot db upgrade"
        )
    return Check("database", State.OK, f"{where} at revision {head}")


def _queue(settings: Settings, engine: sa.Engine | None) -> Check:
    where = redact_url(settings.queue_url)
    try:
        waiting = make_huey(settings.queue_url, _COUNT_ONLY_KEY).pending_count()
    except Exception as exc:  # Redis, SQLite and the key each fail their own way; all mean "not usable"
        return Check(
            "queue",
            State.FAIL,
            f"{where}: {' '.join(str(exc).split())}",
            "start Redis, or fix REVIEWBOT_QUEUE_URL",
        )
    if engine is None:
        return Check("queue", State.SKIP, f"{where}: {waiting} jobs waiting; consumers unknown (no database)")
    consumers = alive_consumers(engine)
    if not consumers:
        fix = (
            "run `reviewbot serve` (it consumes the SQLite queue)"
            if settings.queue_url.startswith("sqlite")
            else "run `reviewbot worker`"
        )
        return Check("queue", State.FAIL, f"{where}: {waiting} jobs waiting and no consumer alive", fix)
    return Check("queue", State.OK, f"{where}: {waiting} jobs waiting; {len(consumers)} consumer(s) alive")


async def _models(settings: Settings, engine: sa.Engine | None) -> list[Check]:
    return [await _student(settings, engine), await _teacher(settings)]


async def _student(settings: Settings, engine: sa.Engine | None) -> Check:
    where = str(settings.student_base_url)
    client = LLMClient(
        where, settings.student_api_key.get_secret_value(), role="student", timeout_s=TIMEOUT_S, max_retries=0
    )
    async with client:
        try:
            served = set(await client.list_models())
            window = await client.max_model_len(settings.student_model)
        except LLMError as exc:
            return Check(
                "student model", State.FAIL, str(exc),
                "start it (`bash deploy/run.sh` starts the demo student) or set REVIEWBOT_STUDENT_BASE_URL",
            )  # fmt: skip
        if settings.student_model not in served:
            return Check(
                "student model", State.FAIL,
                f"{where} serves {sorted(served)}, not {settings.student_model!r}",
                "set REVIEWBOT_STUDENT_MODEL to the served name (vLLM's --served-model-name)",
            )  # fmt: skip
        if engine is not None:
            # As a review does: a restarted server, or a replica whose filesystem resolver has not
            # been asked for them yet, lists the adapters in use only once they are loaded.
            try:
                served |= set(await load_missing_adapters(engine, client))
            except LLMError as exc:
                return Check(
                    "student model", State.FAIL, f"{where} cannot load the adapters in use: {exc}",
                    "serve the base weights they were trained on, or `reviewbot models rollback`",
                )  # fmt: skip
    wanted = set(served_models(settings, engine).values()) if engine is not None else set()
    adapters = _served_adapters(engine) if engine is not None else set()
    missing = sorted((wanted | adapters) - served)
    if missing:
        return Check(
            "student model", State.FAIL, f"{where} does not serve {missing}",
            "restart `reviewbot serve` (it loads the active adapters) or `reviewbot models rollback`",
        )  # fmt: skip
    needed = context_needed(settings.review_chunk_tokens)
    if window is not None and window < needed:
        return Check(
            "student model", State.FAIL,
            f"its context is {window} tokens; chunks of {settings.review_chunk_tokens} need {needed}",
            f"serve it with --max-model-len {needed} or more, or lower REVIEWBOT_REVIEW_CHUNK_TOKENS",
        )  # fmt: skip
    context = f"context {window} tokens" if window else "context length not reported"
    return Check(
        "student model", State.OK, f"{settings.student_model} at {where}, {len(served)} served; {context}"
    )


def _served_adapters(engine: sa.Engine) -> set[str]:
    """The adapters reviews use: the active versions and running canaries."""
    with Session(engine) as session:
        rows = session.exec(select(ModelVersion).where(col(ModelVersion.status).in_(SERVED))).all()
    return {row.adapter_name for row in rows}


async def _teacher(settings: Settings) -> Check:
    if settings.teacher_base_url is None or not settings.teacher_model:
        return Check("teacher model", State.SKIP, "not configured (the flywheel needs one)")
    client = LLMClient.teacher(settings)
    client.timeout_s, client.max_retries = TIMEOUT_S, 0
    async with client:
        try:
            served = await client.list_models()
        except LLMError as exc:
            return Check(
                "teacher model", State.FAIL, str(exc), "check REVIEWBOT_TEACHER_BASE_URL and its API key"
            )
    if settings.teacher_model not in served:
        return Check(
            "teacher model", State.FAIL, f"the server does not list {settings.teacher_model!r}",
            "set REVIEWBOT_TEACHER_MODEL to one of the server's models",
        )  # fmt: skip
    return Check("teacher model", State.OK, f"{settings.teacher_model} at {settings.teacher_base_url}")


def _projects(settings: Settings, engine: sa.Engine) -> Iterator[Check]:
    with Session(engine) as session:
        sources = session.exec(select(Source).where(col(Source.enabled)).order_by(Source.name)).all()
        projects = session.exec(
            select(Project).where(col(Project.enabled)).order_by(Project.forge, Project.path)
        ).all()
    try:
        app_keys: AppKeys | None = AppKeys(engine, secret_box(settings))
    except ConfigError:  # a PostgreSQL database without REVIEWBOT_SECRET_KEY: the Apps' lines say so
        app_keys = None
    for source in sources:
        yield from _source(settings, source, app_keys)
    for project in projects:
        yield from _project(settings, engine, project, app_keys)


def _source(settings: Settings, source: Source, app_keys: AppKeys | None) -> Iterator[Check]:
    """A GitLab group: its token on the group and the group's webhook; a GitHub App: its key."""
    if source.kind == SourceKind.GITHUB_APP:
        name = f"github app {source.name}"
        key = app_keys(source.id) if app_keys is not None and source.id is not None else None
        if key is None:
            why = "its private key cannot be opened (another REVIEWBOT_SECRET_KEY?)"
            yield Check(name, State.FAIL, why, "register it again: reviewbot app add")
            return
        try:
            slug = app_slug(github_api_url(source.forge_url), key.app_id, key.private_key)
        except ForgeError as exc:
            yield Check(name, State.FAIL, str(exc), "check the App's id and private key on GitHub")
            return
        yield Check(name, State.OK, f"GitHub knows the App ({slug}) and its key")
        return
    name = f"gitlab group {source.name}"
    variable = source.token_env or DEFAULT_TOKEN_ENV[ForgeKind.GITLAB]
    token = os.environ.get(variable)
    if not token:
        fix = f"set {variable} in the service's environment"
        yield Check(f"{name}: token", State.FAIL, f"${variable} is not set", fix)
        return
    from bot.forges.gitlab import GitLabGroup  # python-gitlab, only when there is a group to check

    group = GitLabGroup(source.forge_url, token, source.name, timeout_s=TIMEOUT_S)
    yield from _connection(name, group, settings.webhook_url(source.forge, source.webhook_key), variable, "")


def _project(
    settings: Settings, engine: sa.Engine, project: Project, app_keys: AppKeys | None
) -> Iterator[Check]:
    name = f"{project.forge} {project.path}"
    variable = project.token_env or DEFAULT_TOKEN_ENV[ForgeKind(project.forge)]
    if project.installation_id is None and not os.environ.get(variable):
        fix = f"set {variable} in the service's environment"
        yield Check(f"{name}: token", State.FAIL, f"${variable} is not set", fix)
        return
    try:
        forge = forge_for(project, settings.token_env_prefix, app_keys)
    except ForgeError as exc:
        yield Check(f"{name}: token", State.FAIL, str(exc), "see `reviewbot app list`")
        return
    if project.source_id is None:
        fix = f"reviewbot project hook {project.path} --forge {project.forge} (creates or updates it)"
        hook_url = settings.webhook_url(project.forge, project.webhook_key)
        yield from _connection(name, forge, hook_url, variable, fix)
    elif project.installation_id is None:  # a group's project: the group's webhook serves it
        yield from _token(name, forge, variable)
    yield _recent_activity(engine, project, name)


def _token(name: str, forge: Connection, variable: str) -> Iterator[Check]:
    try:
        problems = forge.access_problems(manage_hooks=False)
    except ForgeError as exc:
        yield Check(
            f"{name}: token", State.FAIL, str(exc), f"check the token in ${variable} and the forge URL"
        )
        return
    if problems:
        fix = f"give the token in ${variable} what is missing, or use another"
        yield Check(f"{name}: token", State.FAIL, "; ".join(problems), fix)
    else:
        yield Check(f"{name}: token", State.OK, "valid, with the scopes and role the bot needs")


def _connection(name: str, forge: Connection, hook_url: str, variable: str, hook_fix: str) -> Iterator[Check]:
    """The token's line, then (when it passed) the webhook's, read through the forge's API."""
    token = list(_token(name, forge, variable))
    yield from token
    if token[0].state is not State.OK:
        return
    try:
        hook = forge.webhook_problems(hook_url)
    except ForgeError as exc:
        hook = [str(exc)]
    if hook:
        fix = hook_fix or "set the webhook on the forge: this URL, every event `project add` lists"
        yield Check(f"{name}: webhook", State.FAIL, "; ".join(hook), fix)
    else:
        yield Check(f"{name}: webhook", State.OK, hook_url)


def _recent_activity(engine: sa.Engine, project: Project, name: str) -> Check:
    with Session(engine) as session:
        last = session.exec(
            select(sa.func.max(Review.created_at)).where(Review.project_id == project.id)
        ).one()
    if last is None:
        return Check(
            f"{name}: deliveries", State.WARN, "no review yet", "open or push to a merge request to try it"
        )
    ago = datetime.now(UTC) - (last if last.tzinfo else last.replace(tzinfo=UTC))
    state = State.WARN if ago > QUIET_AFTER else State.OK
    return Check(
        f"{name}: deliveries", state, f"last review queued {_age(ago)} ago",
        "check the webhook's recent deliveries on the forge" if state is State.WARN else "",
    )  # fmt: skip


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _public_url(settings: Settings) -> Check:
    url = f"{str(settings.public_url).rstrip('/')}/healthz"
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check(
            "public URL",
            State.FAIL,
            f"{url}: {type(exc).__name__}: {exc}",
            "start `reviewbot serve`, or set REVIEWBOT_PUBLIC_URL to where forges reach it",
        )
    if response.status_code != 200:
        return Check(
            "public URL",
            State.FAIL,
            f"{url} answered {response.status_code}",
            "check the proxy in front of `reviewbot serve`",
        )
    local = (settings.public_url.host or "") in ("127.0.0.1", "localhost", "::1")
    note = "; a forge elsewhere cannot reach a loopback address (set REVIEWBOT_PUBLIC_URL)" if local else ""
    return Check("public URL", State.OK, f"{url} answers{note}")
