"""Forge adapters: everything that knows GitLab or GitHub lives in this package.

``base`` is the protocol the rest of the bot uses; ``gitlab`` and ``github`` implement it with
python-gitlab and PyGithub (imported only when an adapter is made); ``gitlab_events`` and
``github_events`` turn each forge's webhook payloads into forge-neutral ``WebhookEvent``s.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.events import WebhookEvent
from bot.forges import github_events, gitlab_events
from bot.forges.base import Forge, ForgeError
from bot.models import ForgeKind, Project
from bot.sources import AppKey

ForgeFactory = Callable[[Project], Forge]
"""Makes the adapter of a project: ``forge_for`` in production, a test's fake in tests."""
AppKeys = Callable[[int], AppKey | None]
"""The App key of a source, by the source's id (``bot.sources.AppKeys``)."""

DEFAULT_TOKEN_ENV = {ForgeKind.GITLAB: "GITLAB_TOKEN", ForgeKind.GITHUB: "GITHUB_TOKEN"}
DEFAULT_TOKEN_ENV_PREFIX = "REVIEWBOT_TOKEN_"  # REVIEWBOT_TOKEN_ENV_PREFIX's default


def token_env_refusal(variable: str, prefix: str = DEFAULT_TOKEN_ENV_PREFIX) -> str | None:
    """Why ``variable`` may not hold a project's token, or None when it may: whoever can register a
    project must not make the bot send another variable's value (a database password, the secret key)
    to a forge URL they choose."""
    if variable in DEFAULT_TOKEN_ENV.values() or (variable.startswith(prefix) and variable != prefix):
        return None
    allowed = " or ".join(DEFAULT_TOKEN_ENV.values())
    return f"token variable {variable} must start with {prefix} (or be {allowed})"


@dataclass(frozen=True)
class WebhookFormat:
    """How one forge signs, names and shapes its webhook deliveries."""

    kind: ForgeKind
    credential_header: str  # the token or signature; a delivery without it is refused at once
    secret_matches: Callable[[Mapping[str, str], bytes, str], bool]  # (headers, raw body, secret)
    delivery_id: Callable[[Mapping[str, str], bytes], str]  # the same across the forge's redeliveries
    parse: Callable[[Mapping[str, str], dict[str, Any]], WebhookEvent]


WEBHOOK_FORMATS = {
    ForgeKind.GITLAB: WebhookFormat(
        ForgeKind.GITLAB,
        "x-gitlab-token",
        gitlab_events.secret_matches,
        gitlab_events.delivery_id,
        gitlab_events.parse,
    ),
    ForgeKind.GITHUB: WebhookFormat(
        ForgeKind.GITHUB,
        "x-hub-signature-256",
        github_events.secret_matches,
        github_events.delivery_id,
        github_events.parse,
    ),
}


def github_api_url(forge_url: str) -> str:
    """github.com's API lives on api.github.com; any other URL (GitHub Enterprise's
    ``https://HOST/api/v3``, a test server) is the API URL itself."""
    stripped = forge_url.rstrip("/")
    return "https://api.github.com" if stripped in ("https://github.com", "http://github.com") else stripped


def github_web_root(api_url: str) -> str:
    """GitHub's web address for its API's: ``https://api.github.com`` -> ``https://github.com``,
    ``https://HOST/api/v3`` (Enterprise Server) -> ``https://HOST``, ``https://api.X.ghe.com`` ->
    ``https://X.ghe.com``; anything else (a proxy, a test server) serves both at the same root."""
    parts = urllib.parse.urlsplit(api_url.rstrip("/"))
    path, host = parts.path, parts.netloc
    if path.endswith("/api/v3"):
        path = path.removesuffix("/api/v3")
    elif host.startswith("api."):
        host = host.removeprefix("api.")
    return urllib.parse.urlunsplit((parts.scheme, host, path, "", ""))


def merge_request_url(forge: str, forge_url: str, path: str, number: int) -> str:
    """The web page of merge (pull) request ``number`` of project ``path``, made without a request
    (the console lists many): a GitHub project's ``forge_url`` is github.com or its API's address."""
    where = urllib.parse.quote(path, safe="/")
    if forge == ForgeKind.GITHUB:
        return f"{github_web_root(github_api_url(forge_url))}/{where}/pull/{number}"
    return f"{forge_url.rstrip('/')}/{where}/-/merge_requests/{number}"


def forge_for(
    project: Project, token_env_prefix: str = DEFAULT_TOKEN_ENV_PREFIX, app_keys: AppKeys | None = None
) -> Forge:
    """The adapter for ``project``, authenticated with the token in its token variable (which must be
    one a token may be in: ``token_env_refusal``), or, for a GitHub App's repository, with an
    installation token of the App (its key from ``app_keys``)."""
    if project.installation_id is not None:
        return _app_forge(project, app_keys)
    variable = project.token_env or DEFAULT_TOKEN_ENV[ForgeKind(project.forge)]
    refusal = token_env_refusal(variable, token_env_prefix)
    if refusal is not None:
        raise ForgeError(f"{project.forge} project {project.path}: {refusal}", retryable=False)
    token = os.environ.get(variable)
    if not token:
        raise ForgeError(
            f"{project.forge} project {project.path}: no API token; set the environment variable {variable}",
            retryable=False,
        )
    if project.forge == ForgeKind.GITLAB:
        from bot.forges.gitlab import GitLabForge

        return GitLabForge(project.forge_url, token, project.path)
    from bot.forges.github import GitHubForge

    return GitHubForge(github_api_url(project.forge_url), project.path, token=token)


def _app_forge(project: Project, app_keys: AppKeys | None) -> Forge:
    where = f"{project.forge} project {project.path}"
    key = app_keys(project.source_id) if app_keys is not None and project.source_id is not None else None
    if key is None:
        raise ForgeError(
            f"{where}: served by a GitHub App whose private key cannot be read here (the App removed, or "
            "another REVIEWBOT_SECRET_KEY); see `reviewbot app list`",
            retryable=False,
        )
    from bot.forges.github import GitHubForge

    return GitHubForge(
        github_api_url(project.forge_url),
        project.path,
        app_id=key.app_id,
        private_key=key.private_key,
        installation_id=project.installation_id,
    )
