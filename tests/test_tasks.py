"""Ending background work: a task's failure is said when it is awaited at stop, its
cancellation is not; a close that fails is logged at debug level and stopping goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from captify_ws.tasks import close_broken, wait_ended

pytestmark = pytest.mark.unit


async def test_wait_ended_logs_failures_not_cancellations(
        caplog: pytest.LogCaptureFixture) -> None:
    """Of a cancelled task, a finished one and one that had failed, only the failure is
    logged (with its traceback), and nothing is raised."""
    logger = logging.getLogger("captify_ws.test")

    async def fail() -> None:
        raise KeyError("lost")

    cancelled = asyncio.create_task(asyncio.sleep(60))
    finished = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fail(), name="the-failing-one")
    await asyncio.sleep(0)
    cancelled.cancel()
    with caplog.at_level(logging.WARNING, "captify_ws.test"):
        await wait_ended([cancelled, finished, failed], logger)
    records = [r for r in caplog.records if r.name == "captify_ws.test"]
    assert [r.getMessage().split(" (error id")[0] for r in records] == [
        "task the-failing-one had failed"]
    assert records[0].exc_info is not None


async def test_close_broken_says_why_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    """A close that raises is logged at debug level with what was being closed."""
    async def close() -> None:
        raise ConnectionResetError("gone")

    with caplog.at_level(logging.DEBUG, "captify_ws.test"):
        await close_broken(close, logging.getLogger("captify_ws.test"), "the thing")
    assert any("closing the thing failed: gone" in r.getMessage() for r in caplog.records)
