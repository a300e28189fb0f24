"""Keepalive: silent peers are pinged; peers that never answer are closed."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from tests.helpers import running_server
from tests.polling import eventually, stays

UPGRADE = (b"GET /ws/fabric/keepalive HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


async def test_dead_peer_is_closed_and_live_peer_stays() -> None:
    """A peer that answers pings stays connected; one that never answers is closed within
    two ping intervals."""
    async with running_server(ping_interval_s=0.3) as srv, \
            connect(f"{srv.ws}/ws/fabric/keepalive") as alive:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(UPGRADE)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        count = lambda: srv.server.get_connection_count(document_id="keepalive")  # noqa: E731
        await eventually(lambda: count() == 2, "the raw peer to join", timeout=2)
        # what the server sent the live client on connect (sync step 1, awareness) is read
        # now, so that the answer checked at the end can only be a new one
        while (await asyncio.wait_for(alive.recv(), 5))[:2] != b"\x00\x00":
            pass
        # the raw peer never answers: it is pinged after one interval, closed after the next
        await eventually(lambda: count() == 1, "the silent peer to be closed", timeout=3)
        data = await asyncio.wait_for(reader.read(), 5)
        assert b"\x89" in data  # it was pinged (opcode 0x9) before being closed
        writer.close()
        # several more intervals: the answering client stays
        await stays(lambda: count() == 1, "the live client's connection", seconds=1.0)
        await alive.send(b"\x00\x00\x01\x00")  # sync step 1: the server still answers it
        answer = await asyncio.wait_for(alive.recv(), 5)
        while answer[:1] != b"\x00":  # awareness renewals may come first
            answer = await asyncio.wait_for(alive.recv(), 5)
        assert answer[:2] == b"\x00\x01"  # sync step 2, the answer to this step 1
