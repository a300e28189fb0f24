"""Receiving, for :class:`~captify_ws.connection.Connection`: the handler's calls, in order.

The transport calls :meth:`Receiving.deliver` for each message. Each message costs
``1 + size // message_cost_bytes`` against the token bucket (``message_rate``,
``message_burst``); transports charge one more for every other frame (fragments, pings).
Handlers may be plain functions (the fabric hot path) or coroutines; while a coroutine runs,
later messages wait in an inbox so each connection's messages are handled in order, and the
socket stops being read when the inbox is full. A message received before the peer's close is
still handled. ``Receiving`` is a part of ``Connection`` (no state of its own: the slots are
``Connection``'s); it declares below what of the connection it uses, and passes itself where a
``Connection`` is expected (``type: ignore[arg-type]``: it is always one; a cast would cost a
call per message).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Final, Protocol

from captify_ws.errors import (
    CloseCode,
    Reject,
    close_code_for,
    close_reason_for,
    log_with_id,
)
from captify_ws.lifecycle import ConnectionState
from captify_ws.outbound import ConnectionLimits

if TYPE_CHECKING:
    from captify_ws.connection import Connection

logger = logging.getLogger("captify_ws.connection")

#: Messages that may wait while a handler coroutine runs before the socket stops being read.
INBOX_HIGH_WATER: Final = 256


Gate = Callable[["Connection"], Awaitable[None]]


class ConnectionHandler(Protocol):
    """What a connection calls: the part of ``handlers.base.Handler`` this layer owns, so that
    it never imports the handlers above it. Each method may return an awaitable."""

    path: str

    def on_connect(self, conn: Connection) -> Awaitable[None] | None: ...

    def on_message(self, conn: Connection, message: str | bytes) -> Awaitable[None] | None: ...

    def on_close(self, conn: Connection, code: int) -> Awaitable[None] | None: ...

    def on_error(self, conn: Connection, error: Exception) -> Awaitable[None] | None: ...


class Receiving:
    """The receiving part of a connection. See the module docstring."""

    if not TYPE_CHECKING:  # the slots are Connection's (mypy: see the annotations)
        __slots__ = ()

    handler: ConnectionHandler
    id: str
    principal: Any
    close_code: int | None
    closed: bool
    _closing: bool
    closed_by_server: bool
    active: bool
    _limits: ConnectionLimits
    _tokens: float
    _stamp: float
    _inbox: deque[str | bytes] | None
    _inbox_bytes: int
    _reading_paused: bool
    _close_timer: asyncio.TimerHandle | None
    _on_closed: list[Any] | None

    if TYPE_CHECKING:
        def _to(self, state: ConnectionState) -> bool: ...
        def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...
        def _drop_pending(self) -> None: ...
        def _release_transport(self) -> None: ...
        def _pause_reading(self, paused: bool) -> None: ...

    def opened(self, gate: Gate | None = None) -> None:
        """The upgrade is done: pass ``gate`` (authentication, limits), then run the handler's
        ``on_connect``; messages wait, in order, until both are done."""
        self._to(ConnectionState.OPEN)
        self._inbox = deque()
        if gate is not None:
            asyncio.get_running_loop().create_task(self._drain(self._connect(gate)))
            return
        try:
            result = self.handler.on_connect(self)  # type: ignore[arg-type]
        except Exception as exc:
            self._handler_failed(exc)
            result = None
        self._continue(result)

    async def _connect(self, gate: Gate) -> None:
        await gate(self)  # type: ignore[arg-type]
        if self.closed_by_server:
            return
        result = self.handler.on_connect(self)  # type: ignore[arg-type]
        if result is not None:
            await result

    def charge(self, cost: int = 1) -> bool:
        """Take ``cost`` tokens from the bucket (``message_rate`` per second, ``message_burst``
        at most). A costly message is accepted while any token is left and puts the bucket in
        debt (at most one burst), which later messages wait out; with no token left, close with
        4429 and answer ``False``."""
        limits = self._limits
        now = _monotonic()
        tokens = self._tokens + (now - self._stamp) * limits.message_rate
        self._stamp = now
        if tokens < 1.0:
            logger.info("closing %s: more than %g messages per second", self.id,
                        limits.message_rate)
            self.close(CloseCode.RATE_LIMITED, "rate limited")
            return False
        burst = limits.message_burst
        self._tokens = (burst if tokens > burst else tokens) - min(cost, burst)
        return True

    def charge_work(self, size: int) -> bool:
        """Charge the work an answer of ``size`` bytes took (a sync reply: the document's size,
        not the request's) against the rate limit; ``False`` if that closed the connection."""
        cost = size // self._limits.message_cost_bytes
        return self.charge(cost) if cost else True

    def deliver(self, message: str | bytes) -> None:
        """One complete message from the peer."""
        if self._closing:
            return
        if not self.charge(1 + len(message) // self._limits.message_cost_bytes):
            return
        inbox = self._inbox
        if inbox is not None:
            inbox.append(message)
            self._inbox_bytes += len(message)
            if (len(inbox) >= INBOX_HIGH_WATER or self._inbox_bytes >= self._limits.inbox_bytes) \
                    and not self._reading_paused:
                self._reading_paused = True
                self._pause_reading(True)
            return
        try:
            result = self.handler.on_message(self, message)  # type: ignore[arg-type]
        except Exception as exc:
            self._handler_failed(exc)
            return
        if result is not None:
            self._inbox = deque()
            self._continue(result)

    def screened(self, payload: memoryview, text: bool) -> bool:
        """A large message before it is copied or decoded: offered to the handler's optional
        ``screen(conn, payload, text)``, which answers ``True`` when it refused the message from
        its raw bytes (and told the peer), or raises to close the connection as ``on_message``
        would. A message that would be refused anyway then costs no copy, no decoding and no
        fresh memory of its size. ``True`` means the message is done with (charged as
        :meth:`deliver` charges it) and must not be delivered."""
        screen = getattr(self.handler, "screen", None)
        if screen is None or self._closing or self._inbox is not None:
            return False  # in order: messages waiting for a coroutine go first
        try:
            refused = bool(screen(self, payload, text))
        except Exception as exc:
            refused = True
            if self.charge(1 + len(payload) // self._limits.message_cost_bytes):
                self._handler_failed(exc)
            return refused
        if refused:
            self.charge(1 + len(payload) // self._limits.message_cost_bytes)
        return refused

    def lost(self, code: int) -> None:
        """The transport is gone; ``code`` is the close code sent or received (1006 if none)."""
        if not self._to(ConnectionState.CLOSED):
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.close_code is None:
            self.close_code = code
        self._drop_pending()
        self._release_transport()
        self._limits.outbound.progressed(self)  # type: ignore[arg-type]
        if self._inbox is None:
            self._finish()
        # else: the running coroutine calls _finish once the inbox is drained

    def _continue(self, result: Awaitable[None] | None) -> None:
        if result is None:
            self._drain_sync()
        else:
            asyncio.get_running_loop().create_task(self._drain(result))

    def _drain_sync(self) -> None:
        """Handle the inbox in order without a task, until a handler returns a coroutine.

        Messages that arrived before the peer closed are handled; once the server has closed
        the connection, what is left is dropped."""
        inbox = self._inbox
        while inbox:
            message = inbox.popleft()
            self._inbox_bytes -= len(message)
            if self.closed_by_server:
                continue
            try:
                result = self.handler.on_message(self, message)  # type: ignore[arg-type]
            except Exception as exc:
                self._handler_failed(exc)
                continue
            if result is not None:
                asyncio.get_running_loop().create_task(self._drain(result))
                return
        self._inbox = None
        self._inbox_bytes = 0
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self._pause_reading(False)
        if self.closed:
            self._finish()

    async def _drain(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._handler_failed(exc)
        self._drain_sync()

    def _handler_failed(self, exc: Exception) -> None:
        code = close_code_for(exc)
        if isinstance(exc, Reject):
            self._limits.stats.refused(str(exc.code))
        reason = close_reason_for(exc)
        if code == CloseCode.INTERNAL_ERROR:
            # The client gets a generic reason with an id; the detail is logged under it.
            error_id = log_with_id(
                logger, f"handler {self.handler.path} failed on connection {self.id}", exc)
            reason = f"internal error, id {error_id}"
        else:
            logger.info("closing %s with %d: %s", self.id, code, exc)
        try:
            result = self.handler.on_error(self, exc)  # type: ignore[arg-type]
            if result is not None:
                asyncio.get_running_loop().create_task(_quietly(result))
        except Exception:
            logger.exception("on_error of %s failed", self.handler.path)
        self.close(code, reason)

    def _finish(self) -> None:
        code = self.close_code if self.close_code is not None else 1006
        try:
            result = self.handler.on_close(self, code)  # type: ignore[arg-type]
        except Exception:
            logger.exception("on_close of %s failed", self.handler.path)
            result = None
        if result is not None:
            asyncio.get_running_loop().create_task(self._finish_async(result))
        else:
            self._run_closed_callbacks()

    async def _finish_async(self, awaitable: Awaitable[None]) -> None:
        await _quietly(awaitable)
        self._run_closed_callbacks()

    def _run_closed_callbacks(self) -> None:
        callbacks, self._on_closed = self._on_closed or [], None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("close callback failed for %s", self.id)


async def _quietly(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("handler callback failed")
