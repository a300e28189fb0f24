"""In-process clients for the fast tier: a :class:`Connection` whose socket is a list, routed
and gated by a real :class:`Server` (its handlers, authentication, rooms) without a listening
socket. What a peer would receive is in ``frames``; what it sends goes in with ``send``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from captify_ws.broker.memory import MemoryBroker, MemoryHub
from captify_ws.connection import Connection, PreparedFrame, UpgradeRequest
from captify_ws.frames import OPCODE_TEXT
from captify_ws.server import Server
from tests.helpers import test_settings


class InProcessClient(Connection):
    """One client of ``server`` at ``path`` (``?query`` from ``query``)."""

    __slots__ = ("closed_with", "frames")

    def __init__(self, server: Server, path: str, query: dict[str, str] | None = None,
                 headers: list[tuple[str, str]] | None = None,
                 client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        route = server.route(path)
        assert route is not None, f"no handler for {path}"
        handler, subpath = route
        request = UpgradeRequest(path, urlencode(query or {}), headers or [], client)
        super().__init__(request, handler, subpath,
                         limits=server.connection_limits)
        self.frames: list[tuple[int, bytes]] = []
        self.closed_with: int | None = None
        server.open_connection(self)

    def send(self, message: str | bytes | dict[str, Any]) -> None:
        """A message from the peer (a dict is sent as JSON text)."""
        self.deliver(json.dumps(message) if isinstance(message, dict) else message)

    def texts(self) -> list[dict[str, Any]]:
        """The JSON messages received so far."""
        return [json.loads(payload) for opcode, payload in self.frames if opcode == OPCODE_TEXT]

    def binaries(self) -> list[bytes]:
        """The binary messages received so far."""
        return [payload for opcode, payload in self.frames if opcode != OPCODE_TEXT]

    def _write(self, frame: PreparedFrame) -> None:
        self.frames.append((frame.opcode, bytes(frame.payload)))

    def _transport_buffered(self) -> int:
        return 0

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        for frame in flush:
            self._write(frame)
        self.closed_with = code
        self.lost(code)  # the peer answers the close at once

    def _pause_reading(self, paused: bool) -> None:
        return None

    def leave(self) -> None:
        """The peer goes away (its socket closes with 1000)."""
        self.lost(1000)


@contextlib.asynccontextmanager
async def two_instances(**overrides: Any) -> AsyncIterator[tuple[Server, Server, MemoryHub]]:
    """Servers A and B bridged by one MemoryHub (each with its own memory store), started;
    heartbeats every 50 ms."""
    hub = MemoryHub()
    settings = {"cluster_heartbeat_s": 0.05, **overrides}
    first = Server(test_settings(**settings), broker=MemoryBroker(hub))
    second = Server(test_settings(**settings), broker=MemoryBroker(hub))
    await first.start()
    await second.start()
    try:
        yield first, second, hub
    finally:
        await first.stop(timeout=2)
        await second.stop(timeout=2)
