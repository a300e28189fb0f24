"""Keepalive: silent peers are pinged; peers that never answer are closed."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect

from tests.helpers import running_server

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
        started = time.monotonic()
        while srv.server.get_connection_count(document_id="keepalive") < 2:
            assert time.monotonic() - started < 2, "the raw peer never joined"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        # the raw peer never answers: it is pinged after one interval, closed after the next
        while srv.server.get_connection_count(document_id="keepalive") == 2:
            assert time.monotonic() - started < 3, "the silent peer was never closed"
            await asyncio.sleep(0.05)
        data = await asyncio.wait_for(reader.read(), 5)
        assert b"\x89" in data  # it was pinged (opcode 0x9) before being closed
        writer.close()
        await asyncio.sleep(1.0)  # several more intervals: the answering client stays
        assert srv.server.get_connection_count(document_id="keepalive") == 1
        await alive.send(b"\x00\x00\x01\x00")  # sync step 1: still served
        assert (await asyncio.wait_for(alive.recv(), 5))[:2] in (b"\x00\x00", b"\x00\x01")
