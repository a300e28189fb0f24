"""Headless Chromium for page tests: the machine's /usr/bin/chromium driven by Playwright
(``playwright install`` cannot download browsers here)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.helpers import ROOT

ARTIFACTS = ROOT / "test-artifacts"


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is not installed: run `make services` (scripts/system-deps.sh "
                    "installs it with apt)")
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """One headless Chromium for the test; closed afterwards."""
    async with async_playwright() as play:
        browser = await play.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--no-first-run"])
        try:
            yield browser
        finally:
            await browser.close()
