"""The native transport's reading side: picows frames in, to a :class:`NativeConnection`.

The socket is handed here by :class:`~captify_ws.transport.native_server.NativeServer` after the
upgrade (a picows ``WSProtocol``: Cython framing, the fastest Python WebSocket measured here).
What is written to it goes through its connection
(:class:`~captify_ws.transport.native_connection.NativeConnection`).

picows parses frames; what RFC 6455 asks beyond that is checked here (:class:`Listener`):
reserved bits without an extension, close codes that may not be sent (1002, never echoed),
fragments (frames and bytes per message, 1009; UTF-8 checked as it arrives, 1007). Pings are
answered here, not by picows, so that they count against the rate limit and a peer that does not
read gets no pile of pongs.
"""

from __future__ import annotations

import asyncio
import codecs
from typing import TYPE_CHECKING, Any, Final

from picows import WSFrame, WSListener, WSMsgType, WSTransport
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from captify_ws.connection import UpgradeRequest
from captify_ws.errors import CloseCode
from captify_ws.handlers.base import Handler
from captify_ws.transport.lingering import LingeringTransport
from captify_ws.transport.native_connection import NativeConnection

if TYPE_CHECKING:
    from captify_ws.server import Server

#: RFC 6455 §7.4: codes a peer may send (1004-1006 and 1015 are reserved; 1012-1014 are
#: IANA-registered). 3000-4999 are for libraries and applications.
_SENDABLE_CLOSE_CODES: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                          1012, 1013, 1014))


# Enum members looked up once: a comparison by identity on every frame.
_BINARY: Final = WSMsgType.BINARY
_TEXT: Final = WSMsgType.TEXT
_PING: Final = WSMsgType.PING
_PONG: Final = WSMsgType.PONG
_CLOSE: Final = WSMsgType.CLOSE
_CONTINUATION: Final = WSMsgType.CONTINUATION


#: Bytes one read callback takes from a socket at most. picows doubles its read buffer whenever a
#: read fills it, so a flooding peer would soon hand over megabytes per read: tens of thousands of
#: tiny frames dispatched in one callback, the event loop held for them. Capped, a callback
#: handles ~125 pings (about a millisecond), and the loop turns to the other sockets in
#: between. Every request waits for one round of the loop over every busy socket per step (accept,
#: head, answer): under all the attacks of issue 13 at once, 16 KiB instead of 64 KiB took
#: /healthz from p50 27 / p99 85-100 ms to p50 15 / p99 57-62 ms (same machine, back to back).
READ_CHUNK: Final = 16 * 1024


#: Messages at least this large are offered to their handler's ``screen`` before they are
#: copied or decoded (``Connection.screened``).
SCREEN_BYTES: Final = 256 * 1024


class BoundedReads(WSProtocol):  # type: ignore[misc]
    """picows' protocol, reading at most :data:`READ_CHUNK` bytes per callback and one callback
    per loop turn while the peer keeps the socket full.

    libuv reads a readable socket up to 32 times in one turn, as long as each read fills the
    buffer: a flooding peer got 32 callbacks (~30 ms of frames) per turn, and every other
    request waited that long per flooding socket on each of its steps. A read that fills the
    offered buffer pauses reading until the next turn instead (:meth:`_next_turn`)."""

    __slots__ = ("_offered", "_yielding")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._offered = READ_CHUNK  # bytes the last get_buffer offered
        self._yielding = False  # reading paused until the next loop turn

    def get_buffer(self, size_hint: int) -> memoryview:
        buffer: memoryview = super().get_buffer(size_hint)
        if len(buffer) > READ_CHUNK:
            buffer = buffer[:READ_CHUNK]
        self._offered = len(buffer)
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        listener = self.listener
        if listener is not None:
            listener.in_transit += nbytes
        super().buffer_updated(nbytes)
        listener = self.listener  # set by the upgrade, in the call above
        if nbytes >= self._offered and not self._yielding:
            self._yield_turn()
        if listener is None:
            return
        ws = self.transport
        if ws.is_close_frame_sent and not ws.is_disconnected:
            listener.closed_by_picows(ws)
        listener.account(ws)

    def _yield_turn(self) -> None:
        raw = self.transport.underlying_transport
        if raw is None or raw.is_closing():
            return
        self._yielding = True
        raw.pause_reading()
        asyncio.get_running_loop().call_soon(self._next_turn, raw)

    def _next_turn(self, raw: Any) -> None:
        self._yielding = False
        listener = self.listener
        if raw.is_closing() or (listener is not None and listener.holds_reading()):
            return
        raw.resume_reading()


def close_code_allowed(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 §7.4.1, §7.4.2)."""
    return code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


def _code(value: object) -> int:
    """A picows close code (an enum, or a pseudo-member for codes it does not name) as int."""
    number: Any = getattr(value, "value", value)
    return int(number)


class Listener(WSListener):
    """One upgraded socket: picows callbacks → :class:`NativeConnection`; the RFC 6455 rules
    picows leaves to us, and fragmented messages."""

    __slots__ = ("_decoder", "_fragment_frames", "_fragment_size", "_fragment_type",
                 "_fragments", "_handler", "_inbound", "_limits", "_owner", "_ping",
                 "_refused", "_request", "_server", "_subpath", "conn", "in_transit")

    def __init__(self, server: Server, request: UpgradeRequest, handler: Handler,
                 subpath: str) -> None:
        super().__init__()
        self._server = server
        self._request = request
        self._handler = handler
        self._subpath = subpath
        self._limits = server.connection_limits
        #: the connection frames are dispatched to (None once muted), and the one it serves
        self.conn: NativeConnection | None = None
        self._owner: NativeConnection | None = None
        self._fragments: list[Any] | None = None
        self._fragment_type = WSMsgType.BINARY
        self._fragment_size = 0
        self._fragment_frames = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._ping: bytes | None = None  # a ping to answer once the buffer is read
        #: bytes read into picows' buffer and not yet dispatched as a frame: the start of a
        #: frame (as large as max_message_size) still arriving
        self.in_transit = 0
        self._inbound = self._limits.inbound
        self._refused = False  # refused by the inbound budget: nothing is counted any more

    def on_ws_connected(self, transport: WSTransport) -> None:
        # picows keeps the handshake's request and response for the socket's life; their
        # headers (two multidicts, ~1 KB) are never read again on the server side (the
        # connection has its own compact copy: UpgradeRequest).
        for message in (transport.request, transport.response):
            if message is not None:
                message.headers = None  # type: ignore[assignment]
        self.conn = self._owner = NativeConnection(
            self._request, self._handler, self._subpath, transport, limits=self._limits,
            listener=self)
        self._server.open_connection(self.conn)

    def closed_by_picows(self, transport: WSTransport) -> None:
        """A close frame is sent: by the connection (nothing to do), or by picows' parser,
        which refused a frame (1009 from its header, 1002) and would close the socket 10 ms
        later, unread bytes and all (a reset, the close frame lost): the connection closes with
        that code, and the socket lingers (``transport/lingering.py``)."""
        conn = self._owner
        if conn is None or conn.closed_by_server or conn.peer_closed:
            return
        handshake = transport.close_handshake
        sent = handshake.sent if handshake is not None else None
        conn.close(_code(sent.code) if sent is not None else CloseCode.PROTOCOL_ERROR,
                   sent.reason if sent is not None else "")
        transport.disconnect()

    def holds_reading(self) -> bool:
        """Whether the connection paused reading itself (its inbox is full)."""
        conn = self._owner
        return conn is not None and conn.reading_held

    def mute(self) -> None:
        """Drop every frame from now on (the connection was aborted)."""
        self.conn = None

    def account(self, transport: WSTransport) -> None:
        """After a read: what this connection holds of messages not received in full (a frame
        part-way read, the fragments of a message) is reported to the server's inbound budget
        (``inbound.py``), which may refuse it."""
        if self._refused:
            return
        held = self.in_transit
        if self._fragments is not None:
            held += self._fragment_size
        self._inbound.hold(self, held)

    def refuse_inbound(self, reason: str) -> None:
        """Refused by the inbound budget: close with 1009, drop the partial message, and read
        no more into picows' buffer (the socket lingers, discarding, until the peer's end)."""
        self._refused = True
        self._fragments = None
        self._decoder = None
        conn = self._owner
        if conn is None:
            return
        if not conn.closed_by_server:
            conn.close(CloseCode.MESSAGE_TOO_BIG, reason)
        if not conn._ws.is_disconnected:
            conn._ws.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.last_in_buffer:
            self.in_transit = frame.tail_size  # the start of the next frame, if any
        conn = self.conn
        if conn is None:
            return
        conn.active = True
        msg_type = frame.msg_type
        if conn.closed_by_server or conn.peer_closed:
            if msg_type is _CLOSE:
                self._on_close_frame(conn, transport, frame)
            else:
                conn.discard(frame.payload_size)  # closing: read and discard (§7.1.1), bounded
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            conn.close(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
            return
        if msg_type is _BINARY and frame.fin and self._fragments is None:
            if frame.payload_size >= SCREEN_BYTES and conn.screened(
                    frame.get_payload_as_memoryview(), False):
                return
            conn.deliver(frame.get_payload_as_bytes())
        elif msg_type is _TEXT and frame.fin and self._fragments is None:
            if frame.payload_size >= SCREEN_BYTES and conn.screened(
                    frame.get_payload_as_memoryview(), True):
                return
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                conn.close(CloseCode.INVALID_PAYLOAD, "text frame is not valid UTF-8")
                return
            conn.deliver(text)
        elif msg_type is _PING:
            if conn.charge(1):
                self._ping = frame.get_payload_as_bytes()
        elif msg_type is _CLOSE:
            self._on_close_frame(conn, transport, frame)
            return
        elif msg_type is not _PONG:  # a pong needs nothing: any frame answers the keepalive
            self._on_fragment(conn, frame)
        if self._ping is not None and frame.last_in_buffer:
            # RFC 6455 §5.5.3: the most recent ping of what arrived together is answered.
            conn.pong(self._ping)
            self._ping = None

    def _on_close_frame(self, conn: NativeConnection, transport: WSTransport,
                        frame: WSFrame) -> None:
        """RFC 6455 §5.5.1: answer a close with a close, then close the TCP connection; a code
        that may not be sent is a protocol error (1002), never echoed."""
        if conn.closed_by_server:
            conn.peer_closed = True
            transport.disconnect()  # the closing handshake is complete
            return
        code = _code(frame.get_close_code()) if frame.payload_size >= 2 else 1005
        if code != 1005 and not close_code_allowed(code):
            conn.peer_closed = True
            conn.close(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
            return
        conn.answer_close(code, frame.get_close_message())

    def _on_fragment(self, conn: NativeConnection, frame: WSFrame) -> None:
        """One frame of a fragmented message (RFC 6455 §5.4), bounded in frames and bytes."""
        limits = self._limits
        if frame.msg_type is not _CONTINUATION:
            if self._fragments is not None:
                conn.close(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            self._fragments = []
            self._fragment_type = frame.msg_type
            self._fragment_size = 0
            self._fragment_frames = 0
            self._decoder = codecs.getincrementaldecoder("utf-8")() \
                if frame.msg_type is _TEXT else None
        elif self._fragments is None:
            conn.close(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
            return
        self._fragment_frames += 1
        if self._fragment_frames > limits.max_message_frames:
            self._fragments = None
            conn.close(CloseCode.MESSAGE_TOO_BIG,
                       f"message in more than {limits.max_message_frames} frames")
            return
        if not frame.fin and not conn.charge(1):
            self._fragments = None
            return
        chunk = frame.get_payload_as_bytes()
        self._fragment_size += len(chunk)
        if self._fragment_size > limits.max_message_size:
            self._fragments = None
            conn.close(CloseCode.MESSAGE_TOO_BIG,
                       f"message exceeds {limits.max_message_size} bytes")
            return
        if self._decoder is not None:
            try:
                self._fragments.append(self._decoder.decode(chunk, final=frame.fin))
            except UnicodeDecodeError:
                self._fragments = None
                conn.close(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8")
                return
        elif chunk:
            self._fragments.append(chunk)
        if not frame.fin:
            return
        parts, self._fragments = self._fragments, None
        if self._decoder is not None:
            self._decoder = None
            conn.deliver("".join(parts))
        else:
            conn.deliver(b"".join(parts))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._inbound.forget(self)
        self._refused = True
        conn = self._owner
        if conn is None:
            return
        code = 1006
        handshake = transport.close_handshake
        if handshake is not None:
            if handshake.sent is not None:
                code = _code(handshake.sent.code)
            elif handshake.recv is not None:
                code = _code(handshake.recv.code)
        conn.lost(code)
        # Break the cycles (listener <-> connection, protocol <-> transport) so that the
        # protocol's read buffer (as large as the largest frame received) is freed now, not at
        # the next full garbage collection, which an idle server may not run for minutes.
        self._owner = self.conn = None
        underlying = transport.underlying_transport
        if isinstance(underlying, LingeringTransport):
            underlying.release()

    def pause_writing(self) -> None:
        if self._owner is not None:
            self._owner._set_paused(True)

    def resume_writing(self) -> None:
        if self._owner is not None:
            self._owner._set_paused(False)
