"""The native transport's connection: prepared bytes out to a picows socket.

:class:`NativeConnection` is what the rest of the server writes to; its socket's frames arrive
through its :class:`~captify_ws.transport.native.Listener` (the reading side, RFC 6455's
checks). Broadcast frames are written to the socket's asyncio transport as prepared bytes:
server frames are unmasked, so every member gets the very same ``bytes`` object
(``PreparedFrame.wire``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSTransport

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.frames import FrameBatch
from captify_ws.handlers.base import Handler
from captify_ws.lifecycle import ConnectionState
from captify_ws.transport.lingering import LingeringTransport

if TYPE_CHECKING:
    from captify_ws.transport.native import Listener


class NativeConnection(Connection):
    """A WebSocket carried by picows."""

    transport_name = "native"

    __slots__ = ("_listener", "_raw", "_raw_write", "_socket", "_ws", "peer_closed",
                 "reading_held")

    def __init__(self, request: UpgradeRequest, handler: Handler, subpath: str,
                 ws: WSTransport, *, limits: ConnectionLimits, listener: Listener) -> None:
        super().__init__(request, handler, subpath, limits=limits)
        self._listener = listener
        self._ws = ws
        raw = ws.underlying_transport
        self._raw = raw
        self._raw_write = raw.write
        #: the event loop's transport under ``raw`` (a LingeringTransport, closing once it
        #: lingers, which is after the close frame: ``is_close_frame_sent`` says as much)
        self._socket = raw.socket_transport if isinstance(raw, LingeringTransport) else raw
        #: the peer's close frame arrived
        self.peer_closed = False
        #: reading paused by the connection (its inbox is full), not only for a loop turn
        self.reading_held = False
        self.direct_write = self._direct_target()

    def _direct_target(self) -> Callable[[bytes], object] | None:
        # uvloop drops a write to a transport it closed on an error (we hear of it a turn
        # later); the standard library's loop logs a warning for each one: there every frame
        # goes through send_frame, which checks the transport first.
        if type(self._socket).__module__.startswith("uvloop"):
            return self._raw_write
        return None

    def send_frame(self, frame: PreparedFrame) -> None:
        # Connection.send_frame with the write inlined: the hot path of every broadcast, once
        # per copy (one Python call less per copy).
        if self._closing:
            return
        stats = self._limits.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame.payload)
        if self._paused:
            self._enqueue(frame)
        elif not self._socket.is_closing() and not self._ws.is_close_frame_sent:
            self._raw_write(frame.wire)
            if self._paused:  # this write filled the transport
                self._hold_trigger((frame,))

    def _write(self, frame: PreparedFrame) -> None:
        # A socket that failed is closed before picows reports it lost (asyncio warns on every
        # write to it from then on); after picows failed the connection itself (a protocol
        # error it detects) nothing may follow its close frame.
        if not self._socket.is_closing() and not self._ws.is_close_frame_sent:
            self._raw_write(frame.wire)

    def _write_many(self, frames: Sequence[PreparedFrame]) -> None:
        # uvloop hands a list to one writev(): the shared frames leave in one system call,
        # without being copied into one buffer per socket; a broadcast lists them once.
        if not self._socket.is_closing() and not self._ws.is_close_frame_sent:
            self._raw.writelines(frames.wires if type(frames) is FrameBatch
                                 else [frame.wire for frame in frames])

    def _transport_buffered(self) -> int:
        return int(self._raw.get_write_buffer_size())

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        if self._ws.is_disconnected or self._raw.is_closing() or self._ws.is_close_frame_sent:
            return
        if flush:
            self._raw.writelines([frame.wire for frame in flush])
        self._ws.send_close(WSCloseCode(code), reason.encode("utf-8"))
        if self.peer_closed:
            self._ws.disconnect()
        else:
            # RFC 6455 §7.1.1: read (and discard) until the peer's close frame arrives.
            self._raw.resume_reading()

    def answer_close(self, code: int, message: bytes) -> None:
        """The peer closed first: echo its code (1000 for a close without one, since 1005 may
        not be sent) and close the TCP connection. Messages it sent before are still handled."""
        self.peer_closed = True
        self._to(ConnectionState.CLOSING)
        if self.close_code is None:
            self.close_code = code
        if not self._ws.is_disconnected:
            self._ws.send_close(WSCloseCode(1000 if code == 1005 else code), message)
            self._ws.disconnect()

    def _abort_transport(self) -> None:
        # picows goes on dispatching every frame left in its buffer (tens of thousands of
        # tiny frames from a flood): from now on they are dropped as cheaply as possible.
        self._listener.mute()
        if not self._ws.is_disconnected:
            self._raw.abort()

    def _pause_reading(self, paused: bool) -> None:
        self.reading_held = paused
        if self._ws.is_disconnected or self._raw.is_closing():
            return
        if paused:
            self._raw.pause_reading()
        else:
            self._raw.resume_reading()

    def _ping(self) -> None:
        if not self._raw.is_closing():
            self._ws.send_ping()

    def pong(self, payload: bytes) -> None:
        """Answer a ping, unless the peer is not reading what it was sent already (RFC 6455
        §5.5.3 allows answering only the most recent ping)."""
        if not self._paused and not self._closing and not self._raw.is_closing():
            self._ws.send_pong(payload)
