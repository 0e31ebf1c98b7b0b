"""A real Chromium (Debian's ``chromium``, driven by Playwright; no browser is downloaded) for the pages
the project ships: a browser per test module, and a fresh context and page per test.

Playwright's sync API runs an event loop on the calling thread while it is open: a browser kept for
the whole session would make every later ``asyncio.run`` in the suite fail. A module's browser is
closed, and its loop with it, before the next module's tests run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system package (.ci/run installs it): missing is a failure, not a skip."""
    executable = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if executable is None:
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=["--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in its own context (no state shared between tests); an uncaught script error on it fails
    the test at teardown."""
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
