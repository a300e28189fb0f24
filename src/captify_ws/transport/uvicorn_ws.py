"""uvicorn's WebSocket protocol (websockets' sans-I/O ``ServerProtocol``) with captify-ws's bounds.

``captify-ws serve --transport asgi`` runs captify-ws under uvicorn with this protocol; to get the
same bounds when you run ``create_app()`` under your own uvicorn, pass
``ws=captify_ws.transport.uvicorn_ws.websocket_protocol(settings)``. Other ASGI servers work
too, with their own framing limits, and without the abort of a peer that does not read.

websockets checks RFC 6455 itself (reserved bits, opcodes, control frames, close codes, UTF-8,
``Sec-WebSocket-Version``, 426). Added here:

* frames per message (``max_message_frames``, 1009) — websockets bounds the bytes only;
* every fragment and ping counts against the connection's rate limit (4429);
* what the connection holds of a message not received in full (its fragments, the part of a
  frame in websockets' reader) counts against the server's inbound budget (``inbound.py``),
  which may refuse it (1009);
* a ping from a peer that does not read what it was sent is not answered (RFC 6455 §5.5.3);
* a protocol error sends its close frame and half-closes, then reads until the peer closes or
  ``close_timeout_s`` passes (a close code must reach a client that is sending at that moment);
  the close timer aborts the TCP connection rather than waiting for buffers that never drain;
* :class:`TransportAccess` for :class:`~captify_ws.transport.asgi.AsgiConnection` (scope
  extension ``captify.transport``): bytes in the transport's buffer, abort, frame charging.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import State

from captify_ws.frames import PreparedFrame
from captify_ws.inbound import InboundBudget

if TYPE_CHECKING:
    from captify_ws.config import Settings

#: The scope extension carrying :class:`TransportAccess`.
EXTENSION = "captify.transport"


class Chargeable(Protocol):
    def charge(self, cost: int = 1) -> bool: ...


class TransportAccess(Protocol):
    """What an ASGI connection may ask of the protocol that carries it."""

    def buffered(self) -> int:
        """Bytes in the transport's write buffer."""

    def abort(self) -> None:
        """Drop the TCP connection now."""

    def attach(self, connection: Chargeable, inbound: InboundBudget) -> None:
        """Fragments and pings are charged to ``connection``, and what it holds of partly
        received messages to ``inbound``, from now on."""

    async def send_frames(self, frames: Sequence[PreparedFrame]) -> bool:
        """Write ``frames`` in one write; ``False`` (nothing written) when they must go
        through ASGI ``send`` one by one instead."""


@dataclass(frozen=True, slots=True)
class WebSocketBounds:
    max_message_frames: int = 1024
    max_message_size: int = 16 << 20
    close_timeout_s: float = 5.0


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module docstring."""

    bounds: ClassVar[WebSocketBounds]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.bounds.close_timeout_s
        self._fragments = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._charged: Chargeable | None = None
        self._failed = False
        self._discarded = 0
        self._inbound: InboundBudget | None = None
        self._fragment_bytes = 0  # bytes of self.frames (the fragments of a message)

    # -- TransportAccess -------------------------------------------------------------------

    def buffered(self) -> int:
        return int(self.transport.get_write_buffer_size()) if self.transport else 0

    def abort(self) -> None:
        if self.transport is not None and not self.disconnected:
            self.transport.abort()

    def attach(self, connection: Chargeable, inbound: InboundBudget) -> None:
        self._charged = connection
        self._inbound = inbound
        self._account()

    def _account(self) -> None:
        """Report what this connection holds of messages not received in full."""
        if self._inbound is not None and not self._failed:
            self._inbound.hold(self, len(self.conn.reader.buffer) + self._fragment_bytes)

    def refuse_inbound(self, reason: str) -> None:
        """Refused by the inbound budget (``inbound.py``): 1009, the partial message dropped,
        and what follows discarded (websockets' parser discards after a failure)."""
        self.frames = []
        self._fragment_bytes = 0
        self._fail(1009, reason)

    async def send_frames(self, frames: Sequence[PreparedFrame]) -> bool:
        """Several messages in one write, as websockets would frame them: server frames are
        unmasked (RFC 6455 §5.1), so the prepared frames' bytes are the wire bytes, shared by
        every socket. Not while an extension (permessage-deflate) transforms frames, nor
        once the connection is closing: then ``False`` and the caller uses ASGI ``send``."""
        await self.writable.wait()
        if self.close_sent or self.disconnected or self.conn.extensions or \
                self.conn.state is not State.OPEN or self.transport.is_closing():
            return False
        self.transport.writelines([frame.wire for frame in frames])
        return True

    def _charge(self) -> bool:
        return self._charged is None or self._charged.charge(1)

    # -- uvicorn's protocol ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failed:
            self.conn.receive_data(data)  # discarded: the protocol failed (RFC 6455 §7.1.7)
            self.conn.data_to_send()
            self._discard(len(data))
            return
        super().data_received(data)
        if self.close_sent:
            self._discard(len(data))
        self._account()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inbound is not None:
            self._inbound.forget(self)
            self._inbound = None
        super().connection_lost(exc)
        # Break the cycles (protocol -> scope -> its extension -> protocol, protocol <->
        # connection) so that the protocol and what it holds (websockets' reader buffer, as
        # large as the largest frame part-way read) are freed now, not at the next full
        # collection, which an idle server may not run for minutes.
        self._charged = None
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.get("extensions", {}).pop(EXTENSION, None)

    def _discard(self, size: int) -> None:
        """Past the close frame, what arrives is read and dropped until the peer closes (its
        messages already on their way, the rest of a message too big); a peer that keeps
        sending past a whole message more than that is aborted."""
        self._discarded += size
        if self._discarded > self.bounds.max_message_size + (1 << 20):
            self.abort()

    def handle_connect(self, event: Any) -> None:
        # RFC 6455 §4.2.2: another version → 426 naming the one we speak (websockets says 400).
        if event.headers.get("Sec-WebSocket-Version") != "13":
            response = self.conn.reject(426, "only WebSocket version 13 is supported\n")
            response.headers["Sec-WebSocket-Version"] = "13"
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            self.conn.send_response(response)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the upgrade was accepted (its ASGI task has not run yet)
            scope["extensions"][EXTENSION] = self

    def handle_text(self, event: Frame) -> None:
        self._start(event, codecs.getincrementaldecoder("utf-8")())

    def handle_bytes(self, event: Frame) -> None:
        self._start(event, None)

    def _start(self, event: Frame, decoder: codecs.IncrementalDecoder | None) -> None:
        self._fragments = 1
        self._decoder = decoder
        self.frames = []
        self._fragment_bytes = 0
        self._add(event)

    def handle_cont(self, event: Frame) -> None:
        self._fragments += 1
        if self._fragments > self.bounds.max_message_frames:
            self.frames = []
            self._fail(1009, f"message in more than {self.bounds.max_message_frames} frames")
            return
        if not event.fin and not self._charge():
            self.frames = []
            self._fragment_bytes = 0
            return
        self._add(event)

    def _add(self, event: Frame) -> None:
        """One frame of a message: text is checked as it arrives (RFC 6455 §8.1: fail fast)."""
        data: Any = event.data
        if self._decoder is not None:
            try:
                data = self._decoder.decode(data, final=event.fin)
            except UnicodeDecodeError:
                self.frames = []
                self._fail(1007, "text message is not valid UTF-8")
                return
        self.frames.append(data)
        if event.fin:
            self._deliver()
        else:
            self._fragment_bytes += len(event.data)

    def _deliver(self) -> None:
        parts: list[Any] = self.frames
        self.frames = []
        self._fragment_bytes = 0
        if self.close_sent:
            return  # past the close: read and discard until the peer's close arrives
        if self._decoder is not None:
            self._decoder = None
            self.queue.put_nowait({"type": "websocket.receive", "text": "".join(parts)})
        else:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self.queue.put_nowait({"type": "websocket.receive", "bytes": bytes(data)})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_ping(self) -> None:
        output = self.conn.data_to_send()  # websockets queued the pong already
        if not self._charge():
            return
        if self.writable.is_set() and not self.close_sent:
            self.transport.write(b"".join(output))

    def _fail(self, code: int, reason: str) -> None:
        self.conn.fail(code, reason)
        self.handle_parser_exception()

    def handle_parser_exception(self) -> None:
        """Send the close frame and half-close; keep reading (and discarding) until the peer
        closes or ``close_timeout_s`` passes, then abort."""
        if self._failed:
            return
        self._failed = True
        if self._inbound is not None:
            self._inbound.forget(self)  # nothing more is kept: websockets discards what follows
        close = self.conn.close_sent
        code = close.code if close is not None else 1006
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code,
                               "reason": close.reason if close is not None else ""})
        output = b"".join(self.conn.data_to_send())
        if output:
            self.transport.write(output)
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._arm_close_timer()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message.get("type") == "websocket.close" and self.close_timer is not None:
            self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        self.abort()


def websocket_protocol(settings: Settings) -> type[BoundedWebSocketProtocol]:
    """A protocol class for uvicorn's ``ws=`` with the bounds of ``settings``."""
    bounds = WebSocketBounds(max_message_frames=settings.max_message_frames,
                             max_message_size=settings.max_message_size,
                             close_timeout_s=settings.close_timeout_s)
    return type("CaptifyWebSocketProtocol", (BoundedWebSocketProtocol,), {"bounds": bounds})


def access_from_scope(scope: Any) -> TransportAccess | None:
    """The :class:`TransportAccess` of an ASGI WebSocket scope, when uvicorn runs this protocol."""
    found: Any = scope.get("extensions", {}).get(EXTENSION)
    return found if isinstance(found, BoundedWebSocketProtocol) else None
