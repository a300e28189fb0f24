"""Ending background work without hiding its failures: :func:`wait_ended` and :func:`close_broken`.

Stopping awaits tasks that were cancelled (or that finish their last operation) and closes
connections that may be broken already. A task's cancellation is the expected end; anything else
it raised — earlier, unnoticed, or while ending — and a close that fails are logged, never
raised: stopping goes on (issue 15: every ``except`` logs or re-raises).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from captify_ws.errors import log_with_id


async def wait_ended(tasks: Iterable[asyncio.Task[Any]], logger: logging.Logger) -> None:
    """Wait for each of ``tasks`` (cancel them first if they should not finish); one that
    failed is logged with its traceback under an error id (``errors.log_with_id``)."""
    for task in list(tasks):
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # this coroutine itself is being cancelled
                raise
        except Exception as exc:
            log_with_id(logger, f"task {task.get_name()} had failed", exc,
                        level=logging.WARNING)


async def close_broken(close: Callable[[], Awaitable[Any]], logger: logging.Logger,
                       what: str) -> None:
    """``await close()`` for a resource that may be broken already (a Redis connection after
    an error): a failure is expected, logged at debug level with ``what``, not raised."""
    try:
        await close()
    except Exception as exc:
        logger.debug("closing %s failed: %s", what, exc)
