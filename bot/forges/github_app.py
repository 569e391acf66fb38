"""A GitHub App's own API calls, made with its JWT: who it is, and where it is installed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.forges.base import ForgeError

if TYPE_CHECKING:
    from github import GithubIntegration


@dataclass(frozen=True)
class AppInstallation:
    installation_id: int
    repositories: tuple[str, ...]  # owner/repo


def app_slug(api_url: str, app_id: int, private_key: str) -> str:
    """The App's slug (its bot account is ``slug[bot]``), which also proves the key is the App's."""
    with _github_app(api_url, app_id, private_key) as integration, _calling(api_url, app_id):
        slug: str = integration.get_app().slug
        return slug


def installations(api_url: str, app_id: int, private_key: str) -> list[AppInstallation]:
    """Every installation of the App, with the repositories each may reach (an installation token each)."""
    with _github_app(api_url, app_id, private_key) as integration, _calling(api_url, app_id):
        return [
            AppInstallation(installation.id, tuple(repo.full_name for repo in installation.get_repos()))
            for installation in integration.get_installations()
        ]


@contextmanager
def _github_app(api_url: str, app_id: int, private_key: str) -> Iterator[GithubIntegration]:
    from github import Auth, GithubIntegration

    integration = GithubIntegration(auth=Auth.AppAuth(app_id, private_key), base_url=api_url.rstrip("/"))
    try:
        yield integration
    finally:
        integration.close()


@contextmanager
def _calling(api_url: str, app_id: int) -> Iterator[None]:
    from github import GithubException

    try:
        yield
    except GithubException as exc:
        message = exc.data.get("message") if isinstance(exc.data, dict) else None
        if exc.status == 401:
            why = "it does not know this App, or the private key is not the App's"
        else:
            why = f"HTTP {exc.status}"
        raise ForgeError(
            f"GitHub at {api_url} refused App {app_id}: {why} ({message or 'no message'})",
            retryable=exc.status >= 500,
        ) from None
    except OSError as exc:  # requests' connection errors are OSErrors
        raise ForgeError(f"GitHub at {api_url} cannot be reached: {exc}", retryable=True) from None
