"""Browser fixtures: Playwright (async API, on the suite's session loop) driving Debian's chromium headless.

`scripts/bootstrap` installs chromium and a CJK font; Playwright's own browser download is never used. A missing
chromium fails the browser tests with a message naming `scripts/bootstrap`, it never skips them. Screenshots go
to `artefacts`, under test-artefacts/browser/ (BROWSER_ARTEFACTS overrides it).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

from lastmile_dev import devstack
from tests.support import REPO


def chromium_executable() -> str:
    """The system chromium; fails (never skips) when it is absent."""
    found = devstack.chromium()
    if found is None:
        pytest.fail("chromium is not installed: run `bash scripts/bootstrap` (as root on Debian it installs it)")
    return found


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless chromium for the session (--no-sandbox: the tests run as root)."""
    executable = chromium_executable()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def console_errors() -> list[str]:
    """What went wrong in this test's `page`: its console messages of type error and its uncaught exceptions.

    A test asserts on it after the page has settled, e.g. ``assert console_errors == []``.
    """
    return []


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, console_errors: list[str]) -> AsyncIterator[Page]:
    """A fresh page in its own context (1280x900, zh-CN, Asia/Shanghai, downloads accepted), closed afterwards.

    Its console errors and page errors are appended to the `console_errors` fixture of the same test, as
    ``"console: <text> (<url>:<line>)"`` (no location for inline scripts) and ``"pageerror: <message>"``.
    """

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            at = f" ({where['url']}:{where['lineNumber']})" if where.get("url") else ""
            console_errors.append(f"console: {message.text}{at}")

    def on_page_error(error: Error) -> None:
        console_errors.append(f"pageerror: {error.message}")

    context = await browser.new_context(
        viewport={"width": 1280, "height": 900},
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
        accept_downloads=True,
    )
    try:
        tab = await context.new_page()
        tab.on("console", on_console)
        tab.on("pageerror", on_page_error)
        yield tab
    finally:
        await context.close()


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Path:
    """This test's directory for screenshots: $BROWSER_ARTEFACTS (default test-artefacts/browser, relative to
    the repository root) / <test name>, created."""
    root = REPO / os.environ.get("BROWSER_ARTEFACTS", "test-artefacts/browser")
    directory = root / re.sub(r"[^\w.-]+", "_", request.node.name)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
