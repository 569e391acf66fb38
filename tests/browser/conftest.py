"""The console in a real browser: Debian's Chromium, driven by Playwright, against the real app
(``console_app``, as ``reviewbot serve`` builds it) served over HTTP.

Each tab (``tests.browser.tab.Tab``) fails its test on any console error; the pages tests ask for are
screenshotted under ``$REVIEWBOT_SCREENSHOTS`` (default ``.artifacts/screenshots/`` in the repository).
Without Chromium the tests are skipped, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, sync_playwright

from tests.browser.tab import Served, Tab
from tests.support.console import console_app
from tests.support.live_server import live_server

SCREENSHOTS = pytest.StashKey[Path]()
INSTALL = "apt-get install -y chromium (deploy/test.sh does it when it is missing)"


def pytest_configure(config: pytest.Config) -> None:
    # Read now: tests/conftest.py hides every REVIEWBOT_ variable from the tests themselves.
    chosen = os.environ.get("REVIEWBOT_SCREENSHOTS")
    default = config.rootpath / ".artifacts" / "screenshots"
    config.stash[SCREENSHOTS] = Path(chosen).resolve() if chosen else default


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; skipped without it, failed in CI."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI runs the console's browser tests and Chromium is missing: {INSTALL}")
        pytest.skip(f"Chromium is not installed: {INSTALL}")
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """Chromium for one module's tests. Not longer: Playwright's sync API runs an event loop in the
    tests' thread while it is started, and every later test that calls ``asyncio.run`` would fail."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Serve the console over HTTP: ``serve(engine, jobs=None, **settings)``, stopped after the test."""
    with ExitStack() as stack:

        def start(engine: sa.Engine, jobs: Any = None, **settings: Any) -> Served:
            app, configured = console_app(engine, jobs, **settings)
            return Served(stack.enter_context(live_server(app)), configured)

        yield start


@pytest.fixture
def tabs(browser: Browser, pytestconfig: pytest.Config) -> Iterator[Callable[[str], Tab]]:
    """``tabs(url)``: a tab of a fresh browser (no cookie); each must end the test without a problem."""
    opened: list[Tab] = []

    def open_tab(url: str) -> Tab:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = Tab(context.new_page(), url, pytestconfig.stash[SCREENSHOTS])
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.page.context.close()
    for tab in opened:
        tab.check()
