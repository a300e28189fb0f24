"""One accepted WebSocket: who it is, what it may have waiting to be sent, and how it closes.

:class:`Connection` is the only code that writes to a socket. Subclasses in ``transport/`` know the
transport (native picows, or any ASGI server); handlers and rooms only see this interface.

Sending: :meth:`Connection.send_frame` takes a :class:`PreparedFrame`, a message encoded once per
broadcast, and writes the same bytes to every socket. A connection whose peer does not read has a
byte budget (``send_budget``): while the kernel and the transport hold its bytes, new frames wait
in a queue; Yjs updates in that queue are merged into one; past the budget the connection is closed
with 1013 instead of buffering without end.

Receiving: the transport calls :meth:`Connection.deliver` for each message. Handlers may be plain
functions (the fabric hot path) or coroutines; while a coroutine runs, later messages wait in an
inbox so each connection's messages are handled in order, and the socket stops being read when
the inbox is full.

What ``send_frame`` does not guarantee: that the peer received the frame. A frame is dropped
silently once the connection is closing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import parse_qsl

from pycrdt import merge_updates

from captify_ws.errors import (
    CloseCode,
    Reject,
    close_code_for,
    close_reason_for,
    truncate_reason,
)
from captify_ws.metrics import Stats
from captify_ws.protocol import ywebsocket

if TYPE_CHECKING:
    from captify_ws.handlers.base import Handler

logger = logging.getLogger("captify_ws.connection")

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2

#: Shared empty queue: a connection allocates its own only when something has to wait.
_NO_FRAMES: Final[deque[PreparedFrame]] = deque(maxlen=0)

#: Messages that may wait while a handler coroutine runs before the socket stops being read.
INBOX_HIGH_WATER: Final = 256


def _frame_header(opcode: int, length: int) -> bytes:
    """RFC 6455 §5.2 header of a final, unmasked (server → client) frame."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


class PreparedFrame:
    """A message encoded once, then written unchanged to any number of connections.

    ``wire`` is the complete WebSocket frame (server frames are not masked, so every socket gets
    the same bytes); ``asgi`` is the matching ASGI send event. Both are built on first use.
    ``yjs_update`` marks a y-websocket sync-update frame, which may be merged with others when a
    slow connection falls behind.
    """

    __slots__ = ("_asgi", "_wire", "opcode", "payload", "yjs_update")

    def __init__(self, opcode: int, payload: bytes, yjs_update: bytes | None = None) -> None:
        self.opcode = opcode
        self.payload = payload
        self.yjs_update = yjs_update
        self._wire: bytes | None = None
        self._asgi: dict[str, Any] | None = None

    @classmethod
    def text(cls, text: str) -> PreparedFrame:
        return cls(OPCODE_TEXT, text.encode("utf-8"))

    @classmethod
    def binary(cls, data: bytes, *, yjs_update: bytes | None = None) -> PreparedFrame:
        return cls(OPCODE_BINARY, data, yjs_update)

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = _frame_header(self.opcode, len(self.payload)) + self.payload
        return self._wire

    @property
    def asgi(self) -> dict[str, Any]:
        if self._asgi is None:
            if self.opcode == OPCODE_TEXT:
                self._asgi = {"type": "websocket.send", "text": self.payload.decode("utf-8")}
            else:
                self._asgi = {"type": "websocket.send", "bytes": self.payload}
        return self._asgi

    def __len__(self) -> int:
        return len(self.payload)


class UpgradeRequest:
    """The HTTP request that opened a WebSocket (or asked to).

    Headers are kept as the transport parsed them (never copied: memory per idle connection
    matters); :meth:`header` looks one up case-insensitively.
    """

    __slots__ = ("_headers", "_query", "client", "path", "query_string")

    def __init__(self, path: str, query_string: str = "", headers: Any = (),
                 client: tuple[str, int] | None = None) -> None:
        self.path = path
        self.query_string = query_string
        #: a multidict with ``getall`` (picows), or ``(name, value)`` pairs of str or bytes
        self._headers = headers
        self.client = client
        self._query: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<UpgradeRequest {self.path}?{self.query_string}>"

    @property
    def query(self) -> Mapping[str, str]:
        """Query parameters (the first value of each)."""
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                self._query.setdefault(key, value)
        return self._query

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header as ``(lower-case name, value)``."""
        source = self._headers
        pairs = source.items() if hasattr(source, "getall") else source
        return [(_text(name).lower(), _text(value)) for name, value in pairs]

    def header(self, name: str) -> str | None:
        """A header's value (repeated headers joined by ', '), or ``None``."""
        source = self._headers
        if hasattr(source, "getall"):
            values = [str(value) for value in source.getall(name, ())]
        else:
            wanted = name.lower()
            values = [_text(value) for key, value in source if _text(key).lower() == wanted]
        return ", ".join(values) if values else None


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Limits shared by every connection of a server (one object, not one per connection),
    and the server's counters."""

    send_budget: int = 8 << 20
    message_rate: float = 1000.0
    message_burst: int = 20000
    stats: Stats = field(default_factory=Stats)


Gate = Callable[["Connection"], Awaitable[None]]


class Connection:
    """One WebSocket, whatever transport carries it. See the module docstring."""

    transport_name: ClassVar[str] = "abstract"

    __slots__ = ("_closing", "_inbox", "_limits", "_on_closed", "_paused", "_pending",
                 "_pending_bytes", "_ping_outstanding", "_reading_paused", "_send_budget",
                 "_stamp", "_tokens", "active", "close_code", "closed", "handler", "id",
                 "principal", "request", "state", "subpath")

    def __init__(self, request: UpgradeRequest, handler: Handler, subpath: str, *,
                 limits: ConnectionLimits) -> None:
        self.id = secrets.token_hex(6)
        self.request = request
        self.handler = handler
        #: the part of the path after the handler's path, still percent-encoded
        self.subpath = subpath
        #: for the handler's own use (the fabric handler keeps the room membership here)
        self.state: Any = None
        #: set by authentication; ``None`` when anonymous
        self.principal: Any = None
        self.close_code: int | None = None
        self.closed = False
        self._closing = False
        self._limits = limits
        self._send_budget = limits.send_budget
        self._tokens = float(limits.message_burst)
        self._stamp = _monotonic()
        self._paused = False
        self._pending: deque[PreparedFrame] = _NO_FRAMES  # a real deque once something waits
        self._pending_bytes = 0
        #: set by the transport on every frame received; the keepalive sweep clears it
        self.active = True
        self._ping_outstanding = False
        self._inbox: deque[str | bytes] | None = None
        self._reading_paused = False
        self._on_closed: list[Any] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.request.path}>"

    # -- sending ---------------------------------------------------------------------------

    def send_frame(self, frame: PreparedFrame) -> None:
        """Queue ``frame`` for this connection; the hot path of every broadcast."""
        if self._closing:
            return
        stats = self._limits.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame.payload)
        if self._paused:
            self._enqueue(frame)
        else:
            self._write(frame)

    def send_text(self, text: str) -> None:
        self.send_frame(PreparedFrame.text(text))

    def send_bytes(self, data: bytes) -> None:
        self.send_frame(PreparedFrame.binary(data))

    @property
    def buffered_bytes(self) -> int:
        """Bytes accepted for sending that the peer has not taken yet (queue + transport)."""
        return self._pending_bytes + self._transport_buffered()

    def _enqueue(self, frame: PreparedFrame) -> None:
        if self._pending is _NO_FRAMES:
            self._pending = deque()
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes > self._send_budget:
            self._merge_pending_updates()
            if self._pending_bytes > self._send_budget:
                logger.warning("closing %s: %d bytes waiting, budget %d", self.id,
                               self._pending_bytes, self._send_budget)
                self._limits.stats.slow_consumers += 1
                self._drop_pending()
                self.close(CloseCode.OVERLOADED, "too slow to keep up")

    def _merge_pending_updates(self) -> None:
        """Replace the waiting Yjs update frames by one frame holding their merged update."""
        updates = [frame.yjs_update for frame in self._pending if frame.yjs_update is not None]
        if len(updates) < 2:
            return
        merged = merge_updates(*updates)
        kept = deque(frame for frame in self._pending if frame.yjs_update is None)
        kept.append(PreparedFrame.binary(ywebsocket.encode_sync_update(merged), yjs_update=merged))
        self._pending = kept
        self._pending_bytes = sum(len(frame) for frame in kept)

    def _drop_pending(self) -> None:
        self._pending = _NO_FRAMES
        self._pending_bytes = 0

    def _flush_pending(self) -> None:
        """Write what waited while the transport was paused (called on resume)."""
        self._paused = False
        while self._pending and not self._paused and not self._closing:
            frame = self._pending.popleft()
            self._pending_bytes -= len(frame)
            self._write(frame)
        if not self._pending:
            self._pending = _NO_FRAMES

    def _set_paused(self, paused: bool) -> None:
        if paused:
            self._paused = True
        else:
            self._flush_pending()

    # -- closing ---------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code``; frames still waiting are sent first unless the code is 1013."""
        if self._closing:
            return
        self._closing = True
        if code == CloseCode.OVERLOADED:
            self._drop_pending()
        self.close_code = code
        self._close_transport(code, truncate_reason(reason), list(self._pending))
        self._drop_pending()

    def keepalive(self) -> None:
        """One keepalive sweep (every ``ping_interval_s``): ping a silent peer, or close one
        that did not answer the previous ping. Any frame received counts as an answer."""
        if self._closing:
            return
        if self.active:
            self.active = False
            self._ping_outstanding = False
        elif self._ping_outstanding:
            logger.info("closing %s: no answer to ping", self.id)
            self.abort(CloseCode.GOING_AWAY, "no answer to ping")
        else:
            self._ping_outstanding = True
            logger.debug("ping %s", self.id)
            self._ping()

    def on_closed(self, callback: Any) -> None:
        """Call ``callback(connection)`` once the connection is gone (after ``on_close``)."""
        if self._on_closed is None:
            self._on_closed = []
        self._on_closed.append(callback)

    # -- receiving (called by the transport) -----------------------------------------------

    def opened(self, gate: Gate | None = None) -> None:
        """The upgrade is done: pass ``gate`` (authentication, limits), then run the handler's
        ``on_connect``; messages wait, in order, until both are done."""
        self._inbox = deque()
        if gate is not None:
            asyncio.get_running_loop().create_task(self._drain(self._connect(gate)))
            return
        try:
            result = self.handler.on_connect(self)
        except Exception as exc:
            self._handler_failed(exc)
            result = None
        self._continue(result)

    async def _connect(self, gate: Gate) -> None:
        await gate(self)
        if self._closing:
            return
        result = self.handler.on_connect(self)
        if result is not None:
            await result

    def deliver(self, message: str | bytes) -> None:
        """One complete message from the peer."""
        if self._closing:
            return
        # Token bucket: message_rate per second on average, message_burst at once.
        now = _monotonic()
        tokens = self._tokens + (now - self._stamp) * self._limits.message_rate
        self._stamp = now
        if tokens < 1.0:
            logger.info("closing %s: more than %g messages per second", self.id,
                        self._limits.message_rate)
            self.close(CloseCode.RATE_LIMITED, "rate limited")
            return
        burst = self._limits.message_burst
        self._tokens = (burst if tokens > burst else tokens) - 1.0
        if self._inbox is not None:
            self._inbox.append(message)
            if len(self._inbox) >= INBOX_HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self._pause_reading(True)
            return
        try:
            result = self.handler.on_message(self, message)
        except Exception as exc:
            self._handler_failed(exc)
            return
        if result is not None:
            self._inbox = deque()
            self._continue(result)

    def lost(self, code: int) -> None:
        """The transport is gone; ``code`` is the close code sent or received (1006 if none)."""
        if self.closed:
            return
        self.closed = True
        self._closing = True
        if self.close_code is None:
            self.close_code = code
        self._drop_pending()
        if self._inbox is None:
            self._finish()
        # else: the running coroutine calls _finish once the inbox is drained

    def _continue(self, result: Awaitable[None] | None) -> None:
        if result is None:
            self._drain_sync()
        else:
            asyncio.get_running_loop().create_task(self._drain(result))

    def _drain_sync(self) -> None:
        """Handle the inbox in order without a task, until a handler returns a coroutine."""
        inbox = self._inbox
        while inbox:
            message = inbox.popleft()
            if self._closing and not self.closed:
                continue
            try:
                result = self.handler.on_message(self, message)
            except Exception as exc:
                self._handler_failed(exc)
                continue
            if result is not None:
                asyncio.get_running_loop().create_task(self._drain(result))
                return
        self._inbox = None
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
        if code == CloseCode.INTERNAL_ERROR:
            logger.exception("handler %s failed on connection %s", self.handler.path, self.id,
                             exc_info=exc)
        else:
            logger.info("closing %s with %d: %s", self.id, code, exc)
        try:
            result = self.handler.on_error(self, exc)
            if result is not None:
                asyncio.get_running_loop().create_task(_quietly(result))
        except Exception:
            logger.exception("on_error of %s failed", self.handler.path)
        self.close(code, close_reason_for(exc))

    def _finish(self) -> None:
        code = self.close_code if self.close_code is not None else 1006
        try:
            result = self.handler.on_close(self, code)
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

    # -- what a transport provides ---------------------------------------------------------

    def _write(self, frame: PreparedFrame) -> None:
        raise NotImplementedError

    def _transport_buffered(self) -> int:
        raise NotImplementedError

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        raise NotImplementedError

    def _pause_reading(self, paused: bool) -> None:
        raise NotImplementedError

    def _ping(self) -> None:
        """Send a WebSocket ping (transports whose server pings by itself do nothing)."""

    def abort(self, code: int, reason: str) -> None:
        """Close without waiting for the peer (it seems dead, or does not read)."""
        self.close(code, reason)


async def _quietly(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("handler callback failed")
