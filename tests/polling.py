"""Deadline-bound polling: wait for what a test observes instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: how often a condition is checked; short enough to add no visible latency to a test
POLL_S = 0.02


async def eventually(check: Callable[[], T | Awaitable[T]], what: str,
                     timeout: float = 10.0, interval: float = POLL_S) -> T:
    """Call ``check`` (plain or async) until it returns something truthy and return that;
    fail with ``AssertionError("timed out waiting for <what>")`` after ``timeout`` seconds.
    An ``AssertionError`` raised by ``check`` counts as "not yet" and is re-raised at the
    deadline, so a check may assert with its own message."""
    deadline = time.monotonic() + timeout
    while True:
        last: AssertionError | None = None
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            if last is not None:
                raise AssertionError(f"timed out waiting for {what}: {last}") from last
            raise AssertionError(f"timed out waiting for {what} (last: {result!r})")
        await asyncio.sleep(interval)


def eventually_sync(check: Callable[[], T], what: str, timeout: float = 10.0,
                    interval: float = POLL_S) -> T:
    """:func:`eventually` for code without an event loop (subprocess tests)."""
    deadline = time.monotonic() + timeout
    while True:
        last: AssertionError | None = None
        try:
            result = check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            if last is not None:
                raise AssertionError(f"timed out waiting for {what}: {last}") from last
            raise AssertionError(f"timed out waiting for {what} (last: {result!r})")
        time.sleep(interval)


async def stays(check: Callable[[], bool | Awaitable[bool]], what: str, seconds: float,
                interval: float = POLL_S) -> None:
    """Assert that ``check`` (plain or async) holds on every poll for ``seconds`` (something
    must NOT happen)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        assert result, f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)
