"""A console tab in the browser: it fails its test on any console error, uncaught exception, unexpected
dialog or HTTP error, which is what a broken script, a missing asset or an injected script blocked by
the CSP all show as; and screenshots the pages it is asked to."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import ConsoleMessage, Dialog, Page, Response

from bot.config import Settings
from tests.support.console import TOKEN

T = TypeVar("T")


def off_the_loop(call: Callable[[], T]) -> T:
    """Run ``call`` in a thread of its own: Playwright's sync API keeps an event loop running in the
    tests' thread, and the product's jobs start theirs with ``asyncio.run``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


@dataclass
class Tab:
    """A browser tab on the console at ``url``; ``problems`` collects what must never happen on a page."""

    page: Page
    url: str
    screenshots: Path
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("dialog", self._dialog)
        self.page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url") or self.page.url
        if message.type == "error":
            self.problems.append(f"console error at {where}: {message.text}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status} from {response.url}")

    def _dialog(self, dialog: Dialog) -> None:
        """The console's ``data-confirm`` questions are answered yes; any other dialog is a problem."""
        if dialog.type != "confirm":
            self.problems.append(f"unexpected {dialog.type} dialog: {dialog.message}")
        dialog.accept()

    def go(self, path: str, shot: str | None = None) -> Page:
        """Open ``path``; it must answer 2xx and show no problem; screenshot it as ``shot``."""
        response = self.page.goto(self.url + path)
        assert response is not None
        assert response.ok, f"{path}: HTTP {response.status}: {response.text()[:500]}"
        self.page.wait_for_load_state("load")
        if shot:
            self.shot(shot)
        self.check()
        return self.page

    def shot(self, name: str) -> None:
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=self.screenshots / f"{name}.png", full_page=True)

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)

    def sign_in(self, token: str = TOKEN) -> None:
        self.go("/admin/login")
        self.page.fill("#token", token)
        self.submit("#sign-in")

    def submit(self, button: str) -> None:
        """Click a form's button and wait for the page the console answers with (POST, redirect, GET)."""
        with self.page.expect_navigation():
            self.page.click(button)
        self.page.wait_for_load_state("load")
        self.check()

    def path(self) -> str:
        return re.sub(r"^https?://[^/]+", "", self.page.url)


@dataclass(frozen=True)
class Served:
    url: str
    settings: Settings
