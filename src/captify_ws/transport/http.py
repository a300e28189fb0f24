"""The HTTP stage of a connection: every request of it bounded in bytes and time.

A connection is "in the HTTP stage" from accept until it is upgraded to a WebSocket or closed.
Both transports bound it the same way (``captify-ws serve`` uses :func:`bounded_http_protocol`
for uvicorn's HTTP, natively and under ``--transport asgi``):

* every request head — the first of a connection and every later one — must fit in
  ``http_max_head_bytes`` (431) and arrive within ``http_head_timeout_s`` of its first byte
  (408); a request body must arrive within ``http_body_timeout_s`` (408);
* an idle keep-alive connection is closed after ``http_keepalive_timeout_s``;
* at most ``http_max_connections`` connections are in the HTTP stage at once; more are answered
  503 and closed.

:class:`FrontDoor` is the native transport's first protocol: it reads the first request head and
gives the socket to picows (a WebSocket upgrade) or to the bounded uvicorn protocol (anything else).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast
from urllib.parse import urlsplit

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from captify_ws.transport.handoff import HERE

if TYPE_CHECKING:
    from captify_ws.config import Settings

logger = logging.getLogger("captify_ws.transport")


@dataclass(slots=True)
class HttpStage:
    """The HTTP stage's limits (bytes, seconds) and the connections in it now."""

    max_head_bytes: int = 16 * 1024
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 10_000
    #: connections in the HTTP stage now (front door and HTTP protocol)
    connections: set[object] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpStage:
        return cls(max_head_bytes=settings.http_max_head_bytes,
                   head_timeout_s=settings.http_head_timeout_s,
                   body_timeout_s=settings.http_body_timeout_s,
                   keepalive_timeout_s=settings.http_keepalive_timeout_s,
                   max_connections=settings.http_max_connections)

    def enter(self, protocol: object) -> bool:
        """Count ``protocol`` in; ``False`` if the stage is full."""
        if protocol in self.connections:
            return True
        if len(self.connections) >= self.max_connections:
            return False
        self.connections.add(protocol)
        return True

    def leave(self, protocol: object) -> None:
        self.connections.discard(protocol)


def refuse(transport: asyncio.BaseTransport, status: bytes, body: bytes = b"") -> None:
    """Answer with ``status`` and close (the client is at fault or the stage is full)."""
    writer = cast(asyncio.WriteTransport, transport)
    if not writer.is_closing():
        writer.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Type: text/plain"
                     b"; charset=utf-8\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        writer.close()


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the HTTP stage's limits on every request.

    httptools calls the ``on_*`` callbacks while it parses; the head is counted from the bytes
    received while it is incomplete and from the parsed URL and headers (a head that arrives in
    one read is counted too).
    """

    stage: ClassVar[HttpStage]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.stage.keepalive_timeout_s  # type: ignore[assignment]
        self._in_head = True
        self._head_bytes = 0
        self._parsed_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.stage.enter(self):
            self._refused = True
            refuse(transport, b"503 Service Unavailable", b"too many HTTP connections\n")
            return
        self._arm(self.stage.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stage.leave(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head_before = self._in_head
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if in_head_before and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.stage.max_head_bytes:
                self._refuse(b"431 Request Header Fields Too Large")

    def between_requests(self) -> None:
        """The connection's last request was answered before this protocol took it (the
        front door's ``/healthz``): idle, as after one of its own answers (the keep-alive
        timeout, not the head's)."""
        self._disarm()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)

    def handle_websocket_upgrade(self) -> None:
        self.stage.leave(self)
        self._disarm()
        super().handle_websocket_upgrade()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._parsed_bytes = 0
        self._arm(self.stage.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._parsed_bytes > self.stage.max_head_bytes:
            self._refuse(b"431 Request Header Fields Too Large")
            return
        self._arm(self.stage.body_timeout_s)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete and not self._in_head:
            # The head arrived but the body did not: the app may be waiting for it.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        self._refused = True
        self._disarm()
        logger.info("HTTP request refused: %s", status.decode())
        if self.cycle is not None and self.cycle.response_started and \
                not self.cycle.response_complete:
            self.transport.close()  # an answer is on its way: it cannot be followed by ours
        else:
            refuse(self.transport, status)


def bounded_http_protocol(stage: HttpStage) -> type[BoundedHttpProtocol]:
    """A :class:`BoundedHttpProtocol` class bound to ``stage`` (what uvicorn's ``http=`` takes:
    it instantiates the class itself for every connection)."""
    return type("CaptifyHttpProtocol", (BoundedHttpProtocol,), {"stage": stage})


def head_target(head: bytes) -> tuple[str, bool]:
    """``(path, is_websocket_upgrade)`` from a raw request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    target = parts[1].decode("latin-1") if len(parts) >= 3 else "/"
    path = urlsplit(target).path if not target.startswith("/") else target.partition("?")[0]
    upgrade = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            upgrade = parts[0] == b"GET"
            break
    return path or "/", upgrade


class Doors(Protocol):
    """Where :class:`FrontDoor` hands a connection (``NativeServer``)."""

    def serves_websocket(self, path: str) -> bool: ...

    def hand_to_websocket(self, transport: asyncio.Transport, received: bytes,
                          origin: int) -> None: ...

    def hand_to_http(self, transport: asyncio.Transport, received: bytes) -> None: ...


class FrontDoor(asyncio.Protocol):
    """Reads a connection's first request head (within the stage's bytes and time), then gives
    the socket to ``doors.hand_to_websocket`` or ``doors.hand_to_http`` with the bytes received
    so far. A socket another worker sent here (``transport/handoff.py``) starts with the bytes
    that worker read (``received``) and where it came from (``origin``: a worker's index,
    ``RETURNED``, or ``HERE`` for one this process accepted).

    uvloop's transport keeps a reference to the first protocol's ``data_received`` for the
    socket's life: after the handoff this object is emptied (slots, no buffer, no transport),
    so what an idle WebSocket keeps of it is ~100 bytes."""

    __slots__ = ("_buffer", "_doors", "_origin", "_stage", "_timer", "_transport")

    def __init__(self, stage: HttpStage, doors: Doors, received: bytes = b"",
                 origin: int = HERE) -> None:
        self._stage = stage
        self._doors = doors
        self._origin = origin
        self._buffer: bytearray | None = bytearray(received)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self._stage.enter(self):
            refuse(transport, b"503 Service Unavailable", b"too many HTTP connections\n")
            return
        self._timer = asyncio.get_running_loop().call_later(self._stage.head_timeout_s,
                                                            self._timed_out)
        if self._buffer:  # handed over by another worker with its head read
            self.data_received(b"")

    def _timed_out(self) -> None:
        self._timer = None
        assert self._transport is not None
        refuse(self._transport, b"408 Request Timeout")

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        buffer = self._buffer
        if transport is None or buffer is None or transport.is_closing():
            return
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        limit = self._stage.max_head_bytes
        if (end < 0 and len(buffer) > limit) or end > limit:
            self._buffer = bytearray()
            refuse(transport, b"431 Request Header Fields Too Large")
            return
        if end < 0:
            return
        self._leave()
        path, upgrade = head_target(bytes(buffer[:end]))
        received = bytes(buffer)
        self._buffer = self._transport = None  # handed over: nothing of it stays here
        if upgrade and self._doors.serves_websocket(path):
            self._doors.hand_to_websocket(transport, received, self._origin)
        else:
            self._doors.hand_to_http(transport, received)

    def _leave(self) -> None:
        self._stage.leave(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
