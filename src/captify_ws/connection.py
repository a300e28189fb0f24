"""One accepted WebSocket: who it is, what it may have waiting to be sent, and how it closes.

:class:`Connection` is the only code that writes to a socket. Subclasses in ``transport/`` know the
transport (native picows, or any ASGI server); handlers and rooms only see this interface.

Sending: :meth:`Connection.send_frame` takes a :class:`PreparedFrame`, a message encoded once per
broadcast, and writes the same bytes to every socket; :meth:`Connection.send_frames` takes the
frames one loop turn produced for a socket (a room's batch of updates) and writes them in one
write (one ``writev``: the shared ``bytes`` objects, in order, one system call instead of one
per frame), and so does the queue when the transport drains. While the transport is full (its
peer does not read as fast as it is sent to), new frames wait in a queue. Every byte waiting for the
connection — the queue and the transport's buffer — counts against its ``send_budget`` (beyond one
message larger than the budget by itself) and against the server's ``OutboundBudget``. Past its
budget, or when its output makes no progress for ``send_timeout_s``, the connection is closed with
1013 (its client reconnects and resynchronises); the cost of a slow reader is linear in what it is
sent, nothing is re-encoded or merged on its behalf.

Closing follows RFC 6455 §7.1.1: the close frame is sent, the socket is read (and what arrives is
discarded) until the peer's close frame, then the TCP connection is closed; a peer that does not
answer within ``close_timeout_s`` is aborted. So a close code reaches a client that is sending at
that moment.

Receiving (``receiving.py``, a part of this class): the handler's calls, in order, with the
token bucket and the inbox. States: ``lifecycle.py``.

What ``send_frame`` does not guarantee: that the peer received the frame. A frame is dropped
silently once the connection is closing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from time import monotonic as _monotonic
from typing import Any, ClassVar, Final

from captify_ws.direct_writes import DirectWrites
from captify_ws.errors import (
    CloseCode,
    truncate_reason,
)
from captify_ws.frames import OPCODE_BINARY, OPCODE_TEXT, PreparedFrame
from captify_ws.lifecycle import TRANSITIONS, ConnectionState
from captify_ws.outbound import ConnectionLimits, OutboundBudget
from captify_ws.receiving import INBOX_HIGH_WATER, ConnectionHandler, Gate, Receiving
from captify_ws.request import UpgradeRequest

__all__ = ["INBOX_HIGH_WATER", "OPCODE_BINARY", "OPCODE_TEXT", "Connection", "ConnectionLimits",
           "Gate", "OutboundBudget", "PreparedFrame", "UpgradeRequest"]

logger = logging.getLogger("captify_ws.connection")

#: Shared empty queue: a connection allocates its own only when something has to wait.
_NO_FRAMES: Final[deque[PreparedFrame]] = deque(maxlen=0)

class Connection(Receiving, DirectWrites):
    """One WebSocket, whatever transport carries it. See the module docstring."""

    transport_name: ClassVar[str] = "abstract"

    __slots__ = (
        "_allowance",
        "_close_timer",
        "_closing",
        "_discarded",
        "_inbox",
        "_inbox_bytes",
        "_limits",
        "_on_closed",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_ping_outstanding",
        "_private",
        "_reading_paused",
        "_stamp",
        "_tokens",
        "_trigger",
        "_watchers",
        "active",
        "close_code",
        "closed",
        "closed_by_server",
        "direct_write",
        "handler",
        "id",
        "lifecycle",
        "principal",
        "request",
        "state",
        "subpath",
    )

    def __init__(self, request: UpgradeRequest, handler: ConnectionHandler, subpath: str, *,
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
        #: where the connection is in its life; changed only by :meth:`_to` (TRANSITIONS)
        self.lifecycle = ConnectionState.CONNECTING
        #: the transport is gone (``lifecycle`` is CLOSED); kept as a flag for the hot path
        self.closed = False
        self._closing = False  # CLOSING or CLOSED: nothing more is sent or delivered
        #: the server decided to end this connection (close() was called: a refusal, a limit,
        #: a restart); one whose peer left is not, and what it sent before is still handled
        self.closed_by_server = False
        self._limits = limits
        # A new connection starts with a quarter of the burst (at least one second's worth):
        # one that reconnects over and over cannot spend a whole burst every time.
        self._tokens = float(min(limits.message_burst,
                                 max(limits.message_rate, limits.message_burst // 4)))
        self._stamp = _monotonic()
        self._paused = False
        self._pending: deque[PreparedFrame] = _NO_FRAMES  # a real deque once something waits
        self._pending_bytes = 0
        #: while paused: the frames of the write that filled the transport (held in the
        #: ledger), and the other bytes the transport held then (counted as this one's own)
        self._trigger: Sequence[PreparedFrame] | None = None
        self._private = 0
        self._allowance = 0  # a message larger than the budget, on its way out
        self._close_timer: asyncio.TimerHandle | None = None
        self._discarded = 0  # frames read and dropped after the server's close frame
        #: set by the transport on every frame received; the keepalive sweep clears it
        self.active = True
        self._ping_outstanding = False
        self._inbox: deque[str | bytes] | None = None
        self._inbox_bytes = 0
        self._reading_paused = False
        self._on_closed: list[Any] | None = None
        self.direct_write = None
        self._watchers = None

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
            if self._paused:  # this write filled the transport
                self._hold_trigger((frame,))

    def send_frames(self, frames: Sequence[PreparedFrame]) -> None:
        """Queue ``frames``, in order, for this connection; those that can leave now leave in
        one write. The caller builds ``frames`` once and passes the same sequence to every
        member (a broadcast of several messages: each still counts once in the ledger)."""
        if len(frames) == 1:
            self.send_frame(frames[0])
            return
        if self._closing or not frames:
            return
        stats = self._limits.stats
        stats.frames_out += len(frames)
        for frame in frames:
            stats.bytes_out += len(frame.payload)
        if self._paused:
            for frame in frames:
                self._enqueue(frame)
        else:
            self._write_many(frames)
            if self._paused:
                self._hold_trigger(frames)

    def send_text(self, text: str) -> None:
        self.send_frame(PreparedFrame.text(text))

    def send_bytes(self, data: bytes) -> None:
        self.send_frame(PreparedFrame.binary(data))

    def written_directly(self, frame: PreparedFrame) -> None:
        """A broadcast wrote ``frame`` through :attr:`direct_write`; if that write filled the
        transport, the frame is held as :meth:`send_frame` would hold it."""
        if self._paused and self._trigger is None:
            self._hold_trigger((frame,))

    def count_sent(self, frames: int, size: int) -> None:
        """``frames`` frames of ``size`` bytes each were written directly (server-wide
        counters, as :meth:`send_frame` counts one)."""
        stats = self._limits.stats
        stats.frames_out += frames
        stats.bytes_out += frames * size

    def _enqueue(self, frame: PreparedFrame) -> None:
        if self._pending is _NO_FRAMES:
            self._pending = deque()
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._limits.outbound.hold(frame)
        waiting = self._pending_bytes + self._transport_buffered()
        budget = self._limits.send_budget
        if waiting > budget + self._allowance:
            self.too_slow(f"{waiting} bytes waiting, budget {budget}", abort=False)

    def _hold_trigger(self, frames: Sequence[PreparedFrame]) -> None:
        """The write of ``frames`` filled the transport: they are held (each once for every
        connection that holds it) until the transport drains; the rest of the transport's
        bytes are this one's."""
        if self._trigger is None:
            self._trigger = frames
            outbound = self._limits.outbound
            size = 0
            for frame in frames:
                outbound.hold(frame)
                size += len(frame)
            self._set_private(max(0, self._private - size))

    def _set_private(self, size: int) -> None:
        if size != self._private:
            self._limits.outbound.add(size - self._private)
            self._private = size

    def _release_transport(self) -> None:
        """The transport drained (or is gone): what it held no longer counts."""
        if self._trigger is not None:
            outbound = self._limits.outbound
            for frame in self._trigger:
                outbound.release(frame)
            self._trigger = None
        self._set_private(0)

    def too_slow(self, reason: str, *, abort: bool) -> None:
        """Close with 1013: the peer does not take what it is sent (``reason`` is logged).
        With ``abort`` the TCP connection is dropped at once (its buffers are freed now)."""
        if not self._closing:
            logger.warning("closing %s as too slow to keep up: %s", self.id, reason)
            self._limits.stats.slow_consumers += 1
            self.close(CloseCode.OVERLOADED, "too slow to keep up")
        if abort:
            self._abort()

    def _abort(self) -> None:
        """Drop the TCP connection now. Its buffer is freed at once (connection_lost comes
        later), so it no longer counts."""
        if self.closed:
            return
        self._abort_transport()
        self._release_transport()
        self._limits.outbound.progressed(self)

    def _drop_pending(self) -> None:
        outbound = self._limits.outbound
        for frame in self._pending:
            outbound.release(frame)
        self._pending = _NO_FRAMES
        self._pending_bytes = 0

    def _flush_pending(self) -> None:
        """Write what waited while the transport was paused (called on resume), in one
        write: the bytes move from the queue to the transport's buffer, and count as much."""
        if not self._pending or self._paused or self._closing:
            return
        frames, self._pending = list(self._pending), _NO_FRAMES
        self._pending_bytes = 0
        if len(frames) == 1:
            self._write(frames[0])
        else:
            self._write_many(frames)
        if self._paused:
            self._hold_trigger(frames)
        outbound = self._limits.outbound
        for frame in frames:
            outbound.release(frame)

    def _set_paused(self, paused: bool) -> None:
        """The transport's buffer went over its high-water mark (or back under the low one)."""
        outbound: OutboundBudget = self._limits.outbound
        if paused:
            self._paused = True
            held = self._transport_buffered()
            if held > self._limits.send_budget:
                self._allowance = held
            self._write_state_changed()
            outbound.stalled(self)
            self._set_private(held)
            return
        self._paused = False
        self._write_state_changed()
        self._allowance = 0
        outbound.progressed(self)
        self._release_transport()
        self._flush_pending()

    # -- closing ---------------------------------------------------------------------------

    def _to(self, state: ConnectionState) -> bool:
        """Move to ``state`` if ``TRANSITIONS`` allows it; whether it moved."""
        if state not in TRANSITIONS[self.lifecycle]:
            return False
        self.lifecycle = state
        self._closing = state >= ConnectionState.CLOSING
        self.closed = state is ConnectionState.CLOSED
        if self._closing:
            self._write_state_changed()
        return True

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code`` (RFC 6455 §7.1.1: the peer's close frame is awaited for
        ``close_timeout_s``, then the connection is aborted); frames still waiting are sent
        first unless the code is 1013."""
        if not self._to(ConnectionState.CLOSING):
            return
        self.closed_by_server = True
        self.close_code = code
        flush = [] if code == CloseCode.OVERLOADED else list(self._pending)
        self._drop_pending()
        self._close_transport(code, truncate_reason(reason), flush)
        if not self.closed and self._close_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._close_timer = loop.call_later(self._limits.close_timeout_s,
                                                self._close_timed_out)

    def discard(self, size: int) -> None:
        """A frame of ``size`` bytes arrived after the server's close frame and was dropped
        (RFC 6455 §7.1.1 keeps reading until the peer's close). A peer that keeps sending
        instead of closing — past ``max_message_frames`` frames' worth — is aborted."""
        if self._discarded < 0:
            return  # aborted already; what is left of the last read is dropped
        limits = self._limits
        self._discarded += 1 + size // limits.message_cost_bytes
        if self._discarded > limits.max_message_frames and not self.closed:
            logger.info("aborting %s: it keeps sending after the close frame", self.id)
            self._discarded = -1
            self._abort()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if not self.closed:
            logger.info("aborting %s: no close frame from the peer within %g s", self.id,
                        self._limits.close_timeout_s)
            self._abort()

    def abort(self, code: int, reason: str) -> None:
        """Close without waiting for the peer (it seems dead, or does not read)."""
        self.close(code, reason)
        self._abort()

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
            self._on_closed = [callback]
        else:
            self._on_closed.append(callback)

    # -- what a transport provides ---------------------------------------------------------

    def _write(self, frame: PreparedFrame) -> None:
        raise NotImplementedError

    def _write_many(self, frames: Sequence[PreparedFrame]) -> None:
        """Write ``frames`` in order, in one write where the transport can (this default
        writes them one by one)."""
        for frame in frames:
            self._write(frame)

    def _transport_buffered(self) -> int:
        raise NotImplementedError

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        """Send ``flush`` then the close frame; keep reading until the peer's close."""
        raise NotImplementedError

    def _abort_transport(self) -> None:
        """Drop the TCP connection now, with whatever is still buffered."""

    def _pause_reading(self, paused: bool) -> None:
        raise NotImplementedError

    def _ping(self) -> None:
        """Send a WebSocket ping (transports whose server pings by itself do nothing)."""
