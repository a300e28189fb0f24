"""The native transport: WebSockets on picows, HTTP on uvicorn's parser, one port for both.

A connection starts at :class:`~captify_ws.transport.http.FrontDoor`, which reads the request head
(bounded in bytes and time) and hands the socket over without copying it anywhere else:

* a WebSocket upgrade for a captify-ws path (a registered handler, or anything under ``/ws/``)
  goes to a picows ``WSProtocol`` whose frames go to a ``Listener`` (``transport/native.py``)
  and its ``NativeConnection`` (``transport/native_connection.py``);
* every other request goes to uvicorn's httptools protocol with the HTTP stage's limits on every
  request (``transport/http.py``), running the ASGI app: ``/healthz``, the HTTP API and the
  user's own ``http_app`` (and its WebSockets too).

An upgrade is refused here, before any connection exists: ``Sec-WebSocket-Version`` other than
13 (426, RFC 6455 §4.2.2), no handler for the path (404), a refusal of the server's admission
(its HTTP status, ``errors.http_status_for``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from uvicorn.server import ServerState

from captify_ws.connection import UpgradeRequest
from captify_ws.errors import Reject, http_status_for, log_with_id
from captify_ws.request import header_block
from captify_ws.transport.handoff import HERE, Handoff
from captify_ws.transport.health import health_request, health_response
from captify_ws.transport.http import FrontDoor, HttpStage, bounded_http_protocol
from captify_ws.transport.lingering import LingeringTransport
from captify_ws.transport.native import BoundedReads, Listener

if TYPE_CHECKING:
    from captify_ws.server import Server
    from captify_ws.types import ASGIApp

logger = logging.getLogger("captify_ws.transport")
# picows logs every accept at INFO and makes a child Logger per socket for a plain Logger; an
# adapter avoids both (memory per idle connection matters).
_picows_logger = logging.LoggerAdapter(logging.getLogger("captify_ws.picows"), {})


def _request_from_picows(request: WSUpgradeRequest, transport: Any) -> UpgradeRequest:
    target = request.path.decode("latin-1")
    if not target.startswith("/"):
        target = urlsplit(target).path or "/"
        query = urlsplit(request.path.decode("latin-1")).query
    else:
        target, _, query = target.partition("?")
    peer = transport.get_extra_info("peername") if transport is not None else None
    # The address interned: thousands of connections from one proxy or client share it.
    client = (sys.intern(str(peer[0])), int(peer[1])) \
        if isinstance(peer, tuple) and len(peer) >= 2 else None
    return UpgradeRequest(path=target, query_string=query,
                          headers=header_block(request.headers.items()), client=client)


def _refusal(status: int, text: str, headers: dict[str, str] | None = None) -> Any:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(
        status, (text + "\n").encode("utf-8", "replace"), extra_headers=headers), None)


class NativeServer:
    """Listens on one port; see the module docstring."""

    def __init__(self, server: Server, app: ASGIApp) -> None:
        self.server = server
        settings = server.settings
        self.http_stage = HttpStage.from_settings(settings)
        self._http_protocol = bounded_http_protocol(self.http_stage)
        self._config = uvicorn.Config(
            app, host=settings.host, port=settings.port, lifespan="off",
            http=self._http_protocol, ws="websockets-sansio",
            ws_max_size=settings.max_message_size, ws_per_message_deflate=False,
            log_config=None, access_log=False, ws_ping_interval=settings.ping_interval_s or None,
            ws_ping_timeout=settings.ping_interval_s or None, proxy_headers=False)
        self._config.load()
        self._http_state = ServerState()
        self._listener: asyncio.Server | None = None
        self.handoff: Handoff | None = None
        self._adopting: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None,
                    handoff: Handoff | None = None) -> None:
        """Listen on ``sock`` (bound already, as ``captify-ws serve`` does before starting
        anything else), or bind the settings' host and port; with ``handoff`` (``--workers``),
        also serve the sockets other workers send here. Raises ``OSError`` if the address is
        taken."""
        loop = asyncio.get_running_loop()
        settings = self.server.settings

        def front_door() -> FrontDoor:
            return FrontDoor(self.http_stage, self)

        if handoff is not None:
            self.handoff = handoff
            handoff.counts = self.server.stats.worker_handoffs
            handoff.start(self._adopt)
        if sock is not None:
            self._listener = await loop.create_server(front_door, sock=sock, backlog=4096)
            return
        self._listener = await loop.create_server(
            front_door, settings.host, settings.port, backlog=4096, reuse_address=True,
            reuse_port=settings.reuse_port or None)

    def serves_websocket(self, path: str) -> bool:
        return path.startswith("/ws/") or self.server.route(path) is not None

    def _adopt(self, sock: socket.socket, received: bytes, origin: int) -> None:
        """A socket another worker sent: served from its request head on, as if accepted
        here."""
        task = asyncio.get_running_loop().create_task(self.__adopt(sock, received, origin))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def __adopt(self, sock: socket.socket, received: bytes, origin: int) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: FrontDoor(self.http_stage, self, received, origin), sock=sock)
        except OSError as exc:  # the peer left meanwhile
            logger.debug("a connection from another worker could not be served: %s", exc)
            sock.close()

    def _document_of(self, received: bytes) -> str | None:
        """The document a WebSocket request names, when its handler routes by document."""
        parts = received[:received.find(b"\r\n")].split(b" ")
        if len(parts) < 3:
            return None
        target = urlsplit(parts[1].decode("latin-1"))
        route = self.server.route(target.path)
        if route is None:
            return None
        handler, subpath = route
        affinity = getattr(handler, "affinity", None)
        if affinity is None:
            return None
        try:
            document = affinity(subpath, target.query)
        except Exception:  # a bad name: refused where it was accepted
            return None
        return document if isinstance(document, str) else None

    def _serving(self, document: str) -> int:
        room = self.server.rooms.get(document)
        return len(room) if room is not None else 0

    def hand_to_websocket(self, transport: asyncio.Transport, received: bytes,
                          origin: int = HERE) -> None:
        handoff = self.handoff
        if handoff is not None:
            document = self._document_of(received)
            if document is not None and handoff.route(transport, received, document, origin,
                                                      self._serving):
                return
        # picows' own auto-ping runs a task per connection; the server's keepalive sweep
        # (Connection.keepalive) does the same for all connections with one timer. Pings from
        # the peer are answered by Listener (auto-pong off).
        settings = self.server.settings
        protocol = BoundedReads(
            None, None, False, lambda request: self._listener_for(request, transport),
            _picows_logger, True, settings.http_head_timeout_s, False, 20.0, 20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE, False, settings.max_message_size, None, 2048)
        transport.set_protocol(protocol)
        protocol.connection_made(
            LingeringTransport(transport, protocol, self.server.connection_limits.close_timeout_s))
        view = memoryview(received)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    def _listener_for(self, request: WSUpgradeRequest, transport: asyncio.Transport) -> Any:
        try:
            return self._accept(request, transport)
        except Exception as exc:
            error_id = log_with_id(logger, "upgrade failed", exc)
            return _refusal(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error, id {error_id}")

    def _accept(self, request: WSUpgradeRequest, transport: asyncio.Transport) -> Any:
        # RFC 6455 §4.2.2: another version → 426 naming the one we speak.
        if request.headers.get("sec-websocket-version") != "13":
            return _refusal(HTTPStatus.UPGRADE_REQUIRED, "only WebSocket version 13 is supported",
                            {"Sec-WebSocket-Version": "13"})
        upgrade = _request_from_picows(request, transport)
        route = self.server.route(upgrade.path)
        if route is None:
            return _refusal(HTTPStatus.NOT_FOUND, f"no WebSocket handler for {upgrade.path}")
        try:
            self.server.admit(upgrade)
        except Reject as exc:
            return _refusal(HTTPStatus(http_status_for(exc)), exc.reason)
        handler, subpath = route
        listener = Listener(self.server, upgrade, handler, subpath)
        subprotocol = self.server.subprotocol_for(upgrade)
        if subprotocol is None:
            return listener
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": subprotocol}), listener)

    def hand_to_http(self, transport: asyncio.Transport, received: bytes) -> None:
        end = received.find(b"\r\n\r\n")
        health = health_request(received[:end])
        if health is not None:
            # Answered now, in this read callback (transport/health.py); the connection
            # goes on with the app's protocol for whatever it sends next.
            is_head, keep_alive = health
            transport.write(health_response(self.server.instance_id, is_head, keep_alive))
            if not keep_alive:
                transport.close()
                return
            received = received[end + 4:]
        protocol = self._http_protocol(config=self._config, server_state=self._http_state,
                                       app_state={})
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if received:
            protocol.data_received(received)
        else:
            protocol.between_requests()

    async def stop(self) -> None:
        """Stop accepting; HTTP connections finish their request and close."""
        if self.handoff is not None:
            self.handoff.stop()
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
