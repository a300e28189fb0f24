"""Reading is fair between sockets (issue 13): a peer that keeps its socket full is read one
chunk per event-loop turn, so that every other socket is served in between.

On uvloop, as ``captify-ws serve`` runs: libuv reads a socket up to 32 times in one turn while
each read fills the buffer, and a flooding peer held the loop for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
import uvloop

from captify_ws.transport.native import READ_CHUNK, BoundedReads
from tests.attacks import client_frame
from tests.helpers import running_server

UPGRADE = (b"GET /ws/fabric?documentId=turns HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
#: Unsolicited pongs (RFC 6455 §5.5.3): valid, and not charged against the rate limit.
FLOOD = client_frame(0xA, b"p" * 100) * 30_000


async def _flood_read_per_turn() -> dict[int, int]:
    """Bytes the server read from a flooding socket in each loop turn (turn number → bytes)."""
    turn = 0
    per_turn: defaultdict[int, int] = defaultdict(int)
    original = BoundedReads.buffer_updated

    def counted(self: BoundedReads, nbytes: int) -> None:
        if self.listener is not None:
            per_turn[turn] += nbytes
        original(self, nbytes)

    async def ticker() -> None:
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)  # one callback per loop turn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BoundedReads, "buffer_updated", counted)
        async with running_server("native") as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(UPGRADE)
            await reader.readuntil(b"\r\n\r\n")
            ticking = asyncio.get_running_loop().create_task(ticker())
            writer.write(FLOOD)
            deadline = time.monotonic() + 20
            while sum(per_turn.values()) < len(FLOOD) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            ticking.cancel()
            writer.close()
    return dict(per_turn)


def test_a_flooding_socket_is_read_one_chunk_per_loop_turn() -> None:
    """3 MB of frames written at once are read in turns of at most one chunk (16 KiB) each,
    all of them."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        per_turn = runner.run(_flood_read_per_turn())
    assert sum(per_turn.values()) >= len(FLOOD)
    assert max(per_turn.values()) <= READ_CHUNK, sorted(per_turn.values())[-5:]
