"""The ASGI transport: captify-ws WebSockets under any ASGI server (uvicorn, hypercorn, …).

Slower than the native transport (one ASGI ``send`` per recipient instead of one socket write),
but it lets a product mount captify-ws inside its own FastAPI or Starlette app. Frames for a
connection wait in its queue and one writer task sends them. The queue, the frame being sent and
(under uvicorn with ``transport/uvicorn_ws.py``) the transport's buffer count against the send
budget; a send that does not complete within ``send_timeout_s`` is a stalled connection (1013),
aborted when it does not finish the closing handshake (again, with ``uvicorn_ws``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import uvicorn

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.errors import CloseCode, Reject, http_status_for, log_with_id
from captify_ws.handlers.base import Handler
from captify_ws.protocol import names
from captify_ws.transport.http import HttpStage, bounded_http_protocol
from captify_ws.transport.uvicorn_ws import TransportAccess, access_from_scope, websocket_protocol
from captify_ws.types import Receive, Scope, Send

if TYPE_CHECKING:
    from captify_ws.config import Settings
    from captify_ws.server import Server
    from captify_ws.types import ASGIApp

logger = logging.getLogger("captify_ws.transport")


class AsgiConnection(Connection):
    """A WebSocket carried by an ASGI server."""

    transport_name = "asgi"

    __slots__ = ("_access", "_close_frame", "_final_frames", "_inflight", "_readable", "_send",
                 "_wake", "_writer")

    def __init__(self, request: UpgradeRequest, handler: Handler, subpath: str, send: Send, *,
                 limits: ConnectionLimits, access: TransportAccess | None = None) -> None:
        super().__init__(request, handler, subpath, limits=limits)
        self._send = send
        self._access = access
        if access is not None:
            access.attach(self, limits.inbound)
        self._inflight = 0  # the frame being handed to the ASGI server
        self._wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()
        self._close_frame: tuple[int, str] | None = None
        self._final_frames: list[PreparedFrame] = []
        self._paused = True  # every frame goes through the queue and the writer task
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _write(self, frame: PreparedFrame) -> None:  # pragma: no cover - always queued
        self._enqueue(frame)

    def send_frame(self, frame: PreparedFrame) -> None:
        if self._closing:
            return
        self._enqueue(frame)
        self._wake.set()

    def send_frames(self, frames: Sequence[PreparedFrame]) -> None:
        if self._closing:
            return
        for frame in frames:
            self._enqueue(frame)
        self._wake.set()

    def _set_paused(self, paused: bool) -> None:
        return None

    def keepalive(self) -> None:
        """The ASGI server pings and times out its own WebSockets (uvicorn's ws_ping_*);
        pongs never reach the application, so the server's sweep must leave these alone."""

    def _transport_buffered(self) -> int:
        access = self._access
        return self._inflight + (access.buffered() if access is not None else 0)

    def _abort_transport(self) -> None:
        if self._access is not None:
            self._access.abort()

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        self._close_frame = (code, reason)
        self._final_frames = flush
        self._wake.set()

    def _pause_reading(self, paused: bool) -> None:
        if paused:
            self._readable.clear()
        else:
            self._readable.set()

    async def wait_readable(self) -> None:
        await self._readable.wait()

    async def _write_loop(self) -> None:
        outbound = self._limits.outbound
        budget = self._limits.send_budget
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    if self._access is not None:
                        await self._send_together(self._access)
                        continue
                    frame = self._pending.popleft()
                    size = len(frame)
                    self._pending_bytes -= size
                    self._inflight = size
                    self._allowance = size if size > budget else 0
                    outbound.stalled(self)  # until the ASGI server takes the frame
                    await self._send(frame.asgi)
                    outbound.progressed(self)
                    outbound.release(frame)
                    self._inflight = 0
                    # what the ASGI server wrote is its own copy, held by its transport
                    self._set_private(self._transport_buffered())
                if self._close_frame is not None:
                    code, reason = self._close_frame
                    for frame in self._final_frames:
                        await self._send(frame.asgi)
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
                    return
        except (OSError, RuntimeError, asyncio.CancelledError):
            # The peer went away under us (ASGI servers raise on send after disconnect).
            return
        except Exception as exc:
            # Anything else is a failure of ours or of the ASGI server: said, and the
            # connection ended now (left alone it would look like a client that stopped reading
            # and be closed 1013 later, the error lost).
            log_with_id(logger, f"sending on {self.id} failed", exc)
            self.abort(CloseCode.INTERNAL_ERROR, "internal error")

    async def _send_together(self, access: TransportAccess) -> None:
        """Every frame waiting, in one write of the prepared bytes (under uvicorn with
        ``uvicorn_ws``: shared by every socket, not framed again per connection), else one
        ASGI ``send`` each; they count as in flight until the transport has them."""
        outbound = self._limits.outbound
        frames = list(self._pending)
        self._pending.clear()
        size = self._pending_bytes
        self._pending_bytes = 0
        self._inflight = size
        self._allowance = size if size > self._limits.send_budget else 0
        outbound.stalled(self)  # until the transport takes them
        try:
            if not await access.send_frames(frames):
                for frame in frames:
                    await self._send(frame.asgi)
        finally:
            outbound.progressed(self)
            for frame in frames:
                outbound.release(frame)
            self._inflight = 0
        self._set_private(self._transport_buffered())

    async def stop_writer(self) -> None:
        """Stop the writer task and let go of the ASGI server's protocol (``send`` and the
        transport access): the connection object may live on (a member of a document until it
        leaves), but what the protocol holds is freed now by reference counting."""
        if not self._writer.done():
            self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._access = None
        self._send = _send_nothing


async def _send_nothing(message: Any) -> None:
    """``send`` of a connection whose ASGI connection is over."""


async def deny(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse a WebSocket before accepting it: with an HTTP status where the server allows."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (text + "\n").encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.POLICY})


def raw_path(scope: Scope) -> str:
    """The request path as the client sent it (still percent-encoded; latin-1 text of its
    bytes), from the scope's ``raw_path``, without the part that ``root_path`` stands for.

    ASGI's ``path`` is percent-decoded already: reading a document name from it and decoding
    again would decode twice (``lit%2520x`` → ``lit x``); the native transport reads the raw
    request line. Both therefore route on the raw path and decode names once
    (``protocol/names.py``). A server that gives no ``raw_path`` gets ``path`` re-encoded.
    """
    path: str = scope["path"]
    raw = scope.get("raw_path")
    if isinstance(raw, (bytes, bytearray)):
        text = bytes(raw).decode("latin-1").partition("?")[0]
        for start, char in enumerate(text):
            if char == "/" and unquote(text[start:]) == path:
                return text[start:]
    return names.encode_path(path)


def request_from_scope(scope: Scope) -> UpgradeRequest:
    client = scope.get("client")
    return UpgradeRequest(
        path=raw_path(scope), query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=scope.get("headers", ()),
        client=(str(client[0]), int(client[1])) if client else None)


async def serve_websocket(server: Server, scope: Scope, receive: Receive, send: Send) -> None:
    """Run one ASGI WebSocket connection for a captify-ws handler."""
    request = request_from_scope(scope)
    route = server.route(request.path)
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if route is None:
        await deny(scope, send, 404, f"no WebSocket handler for {request.path}")
        return
    try:
        server.admit(request)
    except Reject as exc:
        await deny(scope, send, http_status_for(exc), exc.reason)
        return
    handler, subpath = route
    accept: dict[str, object] = {"type": "websocket.accept"}
    subprotocol = server.subprotocol_for(request)
    if subprotocol is not None:
        accept["subprotocol"] = subprotocol
    await send(accept)
    conn = AsgiConnection(request, handler, subpath, send, limits=server.connection_limits,
                          access=access_from_scope(scope))
    server.open_connection(conn)
    limit = server.settings.max_message_size
    code = 1006
    try:
        while True:
            await conn.wait_readable()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is None:
                    continue
                if len(data) > limit:
                    conn.close(CloseCode.MESSAGE_TOO_BIG, f"message exceeds {limit} bytes")
                    continue
                conn.deliver(data)
            elif kind == "websocket.disconnect":
                code = int(message.get("code", 1005))
                break
    finally:
        conn.lost(conn.close_code if conn.close_code is not None else code)
        await conn.stop_writer()


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``--transport asgi``: the HTTP stage's bounds on every
    request and the bounded WebSocket protocol (``transport/http.py``, ``uvicorn_ws.py``)."""
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "lifespan": "on",
        "http": bounded_http_protocol(HttpStage.from_settings(settings)),
        "ws": websocket_protocol(settings), "ws_max_size": settings.max_message_size,
        "ws_per_message_deflate": False, "log_config": None, "access_log": False,
        "ws_ping_interval": settings.ping_interval_s or None,
        "ws_ping_timeout": settings.ping_interval_s or None}
    options.update(overrides)
    return uvicorn.Config(app, **options)
