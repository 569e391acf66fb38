"""Forge adapters: one module per forge behind the protocol in ``base``."""

from __future__ import annotations

import os

from bot.forges.base import Forge, ForgeError
from bot.models import Forge as ForgeKind
from bot.models import Project

DEFAULT_TOKEN_ENV = {ForgeKind.GITLAB: "GITLAB_TOKEN", ForgeKind.GITHUB: "GITHUB_TOKEN"}


def github_api_url(forge_url: str) -> str:
    """github.com's API lives on api.github.com; any other URL (GitHub Enterprise's
    ``https://HOST/api/v3``, a test server) is the API URL itself."""
    stripped = forge_url.rstrip("/")
    return "https://api.github.com" if stripped in ("https://github.com", "http://github.com") else stripped


def forge_for(project: Project) -> Forge:
    """The adapter for ``project``, authenticated with the token in its token variable."""
    variable = project.token_env or DEFAULT_TOKEN_ENV[ForgeKind(project.forge)]
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
