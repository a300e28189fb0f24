"""The native transport: WebSockets on picows, HTTP on uvicorn's parser, one port for both.

A connection starts at :class:`_FrontDoor`, which reads the request head and hands the socket
over without copying it anywhere else:

* a WebSocket upgrade for a captify-ws path (a registered handler, or anything under ``/ws/``)
  goes to a picows ``WSProtocol`` (Cython framing, the fastest Python WebSocket measured here);
* every other request goes to uvicorn's httptools protocol running the ASGI app, which serves
  ``/healthz``, the HTTP API and the user's own ``http_app`` (and its WebSockets too).

Broadcast frames are written to the socket's asyncio transport as prepared bytes: server frames
are unmasked, so every member gets the very same ``bytes`` object (``PreparedFrame.wire``).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import uvicorn
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.errors import CloseCode, Reject
from captify_ws.handlers.base import Handler

if TYPE_CHECKING:
    from captify_ws.server import Server
    from captify_ws.types import ASGIApp

logger = logging.getLogger("captify_ws.transport")
# picows logs every accept at INFO and makes a child Logger per socket for a plain Logger; an
# adapter avoids both (memory per idle connection matters).
_picows_logger = logging.LoggerAdapter(logging.getLogger("captify_ws.picows"), {})

#: The request head must arrive within this many bytes and seconds.
MAX_HEAD_BYTES: Final = 16 * 1024
HEAD_TIMEOUT_S: Final = 10.0


def _code(value: object) -> int:
    """A picows close code (an enum, or a pseudo-member for codes it does not name) as int."""
    number: Any = getattr(value, "value", value)
    return int(number)


class NativeConnection(Connection):
    """A WebSocket carried by picows."""

    transport_name = "native"

    __slots__ = ("_raw", "_raw_write", "_ws")

    def __init__(self, request: UpgradeRequest, handler: Handler, subpath: str,
                 ws: WSTransport, *, limits: ConnectionLimits) -> None:
        super().__init__(request, handler, subpath, limits=limits)
        self._ws = ws
        raw = ws.underlying_transport
        self._raw = raw
        self._raw_write = raw.write

    def _write(self, frame: PreparedFrame) -> None:
        # A socket that failed is closed before picows reports it lost; asyncio warns on every
        # write to it from then on.
        if not self._raw.is_closing():
            self._raw_write(frame.wire)

    def _transport_buffered(self) -> int:
        return int(self._raw.get_write_buffer_size())

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        if self._ws.is_disconnected:
            return
        for frame in flush:
            self._raw_write(frame.wire)
        self._ws.send_close(WSCloseCode(code), reason.encode("utf-8"))
        self._ws.disconnect()

    def _pause_reading(self, paused: bool) -> None:
        if self._ws.is_disconnected:
            return
        if paused:
            self._raw.pause_reading()
        else:
            self._raw.resume_reading()

    def _ping(self) -> None:
        if not self._raw.is_closing():
            self._ws.send_ping()

    def abort(self, code: int, reason: str) -> None:
        self.close(code, reason)
        if not self._ws.is_disconnected:
            self._raw.abort()


class _Listener(WSListener):
    """picows callbacks → :class:`NativeConnection`; also reassembles fragmented messages."""

    __slots__ = ("_fragment_size", "_fragment_type", "_fragments", "_handler", "_max_size",
                 "_request", "_server", "_subpath", "conn")

    def __init__(self, server: Server, request: UpgradeRequest, handler: Handler,
                 subpath: str) -> None:
        super().__init__()
        self._server = server
        self._request = request
        self._handler = handler
        self._subpath = subpath
        self._max_size = server.settings.max_message_size
        self.conn: NativeConnection | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_type = WSMsgType.BINARY
        self._fragment_size = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.conn = NativeConnection(self._request, self._handler, self._subpath, transport,
                                     limits=self._server.connection_limits)
        self._server.open_connection(self.conn)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.active = True
        msg_type = frame.msg_type
        if msg_type == WSMsgType.BINARY and frame.fin:
            conn.deliver(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.TEXT and frame.fin:
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                conn.close(CloseCode.INVALID_PAYLOAD, "text frame is not valid UTF-8")
                return
            conn.deliver(text)
        elif msg_type == WSMsgType.CLOSE:
            # RFC 6455 §5.5.1: answer with the code received; a close without one (picows
            # reports 0) is answered with 1000, since 1005 may not be sent.
            code = _code(frame.get_close_code())
            if conn.close_code is None:
                conn.close_code = code or 1005
            transport.send_close(WSCloseCode(code if code >= 1000 else 1000),
                                 frame.get_close_message())
            transport.disconnect()
        elif msg_type in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
            self._on_fragment(conn, frame)
        # PING is answered by picows (auto-pong); PONG needs nothing.

    def _on_fragment(self, conn: NativeConnection, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.CONTINUATION:
            if self._fragments is not None:
                conn.close(CloseCode.INVALID_PAYLOAD, "new message inside a fragmented one")
                return
            self._fragments = []
            self._fragment_type = frame.msg_type
            self._fragment_size = 0
        elif self._fragments is None:
            conn.close(CloseCode.INVALID_PAYLOAD, "continuation frame without a message")
            return
        chunk = frame.get_payload_as_bytes()
        self._fragment_size += len(chunk)
        if self._fragment_size > self._max_size:
            conn.close(CloseCode.MESSAGE_TOO_BIG, f"message exceeds {self._max_size} bytes")
            return
        self._fragments.append(chunk)
        if not frame.fin:
            return
        data = b"".join(self._fragments)
        self._fragments = None
        if self._fragment_type == WSMsgType.TEXT:
            try:
                conn.deliver(data.decode("utf-8"))
            except UnicodeDecodeError:
                conn.close(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8")
        else:
            conn.deliver(data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        conn = self.conn
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

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn._set_paused(True)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn._set_paused(False)


def _request_from_picows(request: WSUpgradeRequest, transport: Any) -> UpgradeRequest:
    target = request.path.decode("latin-1")
    if not target.startswith("/"):
        target = urlsplit(target).path or "/"
        query = urlsplit(request.path.decode("latin-1")).query
    else:
        target, _, query = target.partition("?")
    peer = transport.get_extra_info("peername") if transport is not None else None
    client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
    return UpgradeRequest(path=target, query_string=query, headers=request.headers, client=client)


def _head_target(head: bytes) -> tuple[str, bool]:
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


class _FrontDoor(asyncio.Protocol):
    """Reads the request head, then gives the socket to picows or to uvicorn."""

    def __init__(self, native: NativeServer) -> None:
        self._native = native
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S,
                                                            self._transport.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        assert transport is not None
        path, upgrade = _head_target(bytes(self._buffer[:end]))
        received = bytes(self._buffer)
        self._buffer = bytearray()
        if upgrade and self._native.serves_websocket(path):
            self._native.hand_to_websocket(transport, received)
        else:
            self._native.hand_to_http(transport, received)

    def _refuse(self, status: bytes) -> None:
        assert self._transport is not None
        self._transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n"
                              b"Content-Length: 0\r\n\r\n")
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class NativeServer:
    """Listens on one port; see the module docstring."""

    def __init__(self, server: Server, app: ASGIApp) -> None:
        self.server = server
        settings = server.settings
        self._config = uvicorn.Config(
            app, host=settings.host, port=settings.port, lifespan="off", http="httptools",
            ws="websockets-sansio", ws_max_size=settings.max_message_size,
            ws_per_message_deflate=False, log_config=None, access_log=False,
            ws_ping_interval=settings.ping_interval_s or None,
            ws_ping_timeout=settings.ping_interval_s or None, proxy_headers=False)
        self._config.load()
        self._http_state = ServerState()
        self._listener: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen. Raises ``OSError`` if the address is taken."""
        loop = asyncio.get_running_loop()
        settings = self.server.settings
        self._listener = await loop.create_server(
            lambda: _FrontDoor(self), settings.host, settings.port, backlog=4096,
            reuse_address=True, reuse_port=settings.reuse_port or None)

    def serves_websocket(self, path: str) -> bool:
        return path.startswith("/ws/") or self.server.route(path) is not None

    def hand_to_websocket(self, transport: asyncio.Transport, received: bytes) -> None:
        # picows' own auto-ping runs a task per connection; the server's keepalive sweep
        # (Connection.keepalive) does the same for all connections with one timer.
        protocol = WSProtocol(
            None, None, False, lambda request: self._listener_for(request, transport),
            _picows_logger, True, 10.0, False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,
            True, self.server.settings.max_message_size, None, 2048)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        view = memoryview(received)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    def _listener_for(self, request: WSUpgradeRequest, transport: asyncio.Transport) -> Any:
        upgrade = _request_from_picows(request, transport)
        route = self.server.route(upgrade.path)
        if route is None:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(
                HTTPStatus.NOT_FOUND, f"no WebSocket handler for {upgrade.path}\n".encode()),
                None)
        try:
            self.server.admit(upgrade)
        except Reject as exc:
            status = HTTPStatus.FORBIDDEN if exc.code in (CloseCode.POLICY,
                                                          CloseCode.FORBIDDEN) else \
                HTTPStatus.SERVICE_UNAVAILABLE
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(
                status, (exc.reason + "\n").encode()), None)
        handler, subpath = route
        listener = _Listener(self.server, upgrade, handler, subpath)
        subprotocol = self.server.subprotocol_for(upgrade)
        if subprotocol is None:
            return listener
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": subprotocol}), listener)

    def hand_to_http(self, transport: asyncio.Transport, received: bytes) -> None:
        protocol = HttpToolsProtocol(config=self._config, server_state=self._http_state,
                                     app_state={})
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(received)

    async def stop(self) -> None:
        """Stop accepting; HTTP connections finish their request and close."""
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._http_state.connections):
            connection.shutdown()
        for _ in range(50):
            if not self._http_state.connections:
                break
            await asyncio.sleep(0.05)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
