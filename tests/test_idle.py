"""Idle viewers stay connected (issue 12.5): a y-websocket 3.x provider whose presence is null
on a quiet document is never dropped by its own 30 s silence timer, alone or with other
viewers, at a constant cost per connection."""

from __future__ import annotations

import asyncio
import contextlib
import time

from websockets.asyncio.client import connect

from captify_ws.handlers.fabric import KEEPALIVE
from tests.helpers import providers, running_server

#: The providers' clock runs this many times faster (tests/js/warp.mjs): 5 of their minutes
#: pass in 10 s of ours, through y-websocket's own, unmodified timers.
WARP = 30
IDLE_MINUTES = 5
KEEPALIVE_S = 7.5 / WARP


async def test_idle_viewers_without_presence_stay_connected(transport: str) -> None:
    """Three providers with awareness.setLocalState(null) on an idle document: no reconnect in
    five of their minutes (the fault: one every 30 s). The server's keepalive interval is
    scaled by the same factor, and halved for the margin a loaded CI machine needs
    (7.5 s → 0.25 s against the provider's 1 s)."""
    async with running_server(transport, yws_keepalive_s=KEEPALIVE_S,
                              ping_interval_s=0) as srv, \
            providers(time_warp=WARP) as repl:
        names = ["alone", "v2", "v3"]
        await repl.call("open", name="alone", url=f"{srv.ws}/ws/fabric", doc="idle",
                        awareness=None)
        await repl.call("waitSynced", name="alone", timeout=20_000 * WARP)
        await asyncio.sleep(45 / WARP)  # alone for 45 of its seconds
        for name in names[1:]:
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="idle",
                            awareness=None)
            await repl.call("waitSynced", name=name, timeout=20_000 * WARP)
        await asyncio.sleep(IDLE_MINUTES * 60 / WARP)
        for name in names:
            status = await repl.call("status", name=name)
            assert status["connected"] and status["closes"] == [], (name, status)


async def test_keepalive_costs_the_same_per_connection_whatever_their_number() -> None:
    """Each idle y-websocket connection receives one 3-byte frame per interval, whether it is
    alone or one of 30 (no N² traffic)."""
    interval = 0.2

    async def frames_per_connection(count: int) -> list[int]:
        async with running_server(yws_keepalive_s=interval, ping_interval_s=0) as srv, \
                contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(
                connect(f"{srv.ws}/ws/fabric/cost-{count}")) for _ in range(count)]
            for ws in sockets:
                await ws.recv()  # the server's sync step 1
            started = time.monotonic()
            received = [0] * count
            while time.monotonic() - started < 10 * interval:
                for index, ws in enumerate(sockets):
                    with contextlib.suppress(TimeoutError):
                        while True:
                            frame = await asyncio.wait_for(ws.recv(), 0.001)
                            assert frame == KEEPALIVE.payload == b"\x01\x01\x00"
                            received[index] += 1
                await asyncio.sleep(interval / 4)
            return received

    alone = await frames_per_connection(1)
    many = await frames_per_connection(30)
    assert 7 <= alone[0] <= 12, alone
    assert all(7 <= n <= 12 for n in many), many
