"""What may wait to be sent (issue 13, items 3 and 4): every byte waiting for a connection — its
queue and its transport's buffer — counts against its budget; a broadcast frame counts once in
the server's total however many connections hold it; past the total the connections stalled
longest go first; output that makes no progress is closed; and the rate limit counts the work a
message causes. Transport-level behaviour runs on real servers in test_hostile_load.py; here
the accounting itself, on a connection whose transport the test controls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.errors import CloseCode
from captify_ws.outbound import OutboundBudget
from captify_ws.transport.asgi import AsgiConnection
from tests.helpers import running_server
from tests.polling import eventually

KB = 1024


class Socket(Connection):
    """A connection whose transport is a counter the test fills and drains."""

    __slots__ = ("aborted", "buffered", "closed_with", "written")

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__(UpgradeRequest("/ws/fabric/t"), None, "t",  # type: ignore[arg-type]
                         limits=limits)
        self.buffered = 0
        self.written: list[int] = []
        self.closed_with: int | None = None
        self.aborted = False

    def _write(self, frame: PreparedFrame) -> None:
        self.written.append(len(frame))
        self.buffered += len(frame)

    def _transport_buffered(self) -> int:
        return self.buffered

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        self.closed_with = code

    def _abort_transport(self) -> None:
        self.aborted = True

    def fill(self) -> None:
        """The kernel stopped taking bytes: the transport is over its high-water mark."""
        self._set_paused(True)

    def drain(self) -> None:
        self.buffered = 0
        self._set_paused(False)


def _limits(**changes: Any) -> ConnectionLimits:
    outbound = OutboundBudget(changes.pop("total", 1 << 30), changes.pop("timeout", 30.0))
    return ConnectionLimits(**{"send_budget": 1024 * KB, **changes}, outbound=outbound)


def _frame(size: int) -> PreparedFrame:
    return PreparedFrame.binary(b"\0" * size)


@pytest.mark.unit
async def test_the_transport_buffer_counts_against_the_budget() -> None:
    """600 KB in the transport plus 300 KB queued fits a 1 MB budget; 200 KB more does not
    (queued bytes alone, 500 KB, would have)."""
    conn = Socket(_limits())
    conn.send_frame(_frame(600 * KB))
    conn.fill()
    conn.send_frame(_frame(300 * KB))
    assert conn.closed_with is None
    conn.send_frame(_frame(200 * KB))
    assert conn.closed_with == CloseCode.OVERLOADED


@pytest.mark.unit
async def test_one_message_larger_than_the_budget_still_goes_out() -> None:
    """A 3 MB answer to a client on a slow link is sent; the budget applies beyond it."""
    conn = Socket(_limits())
    conn.send_frame(_frame(3 * 1024 * KB))
    conn.fill()
    conn.send_frame(_frame(800 * KB))
    assert conn.closed_with is None
    conn.send_frame(_frame(300 * KB))
    assert conn.closed_with == CloseCode.OVERLOADED


@pytest.mark.unit
async def test_a_broadcast_frame_counts_once_however_many_hold_it() -> None:
    """100 stalled connections holding the same 100 KB frame count 100 KB, not 10 MB; it is
    released when the last one lets it go."""
    limits = _limits()
    members = [Socket(limits) for _ in range(100)]
    for conn in members:
        conn.send_frame(_frame(70 * KB))  # each its own: fills its transport
        conn.fill()
    private = limits.outbound.total
    shared = _frame(100 * KB)
    for conn in members:
        conn.send_frame(shared)
    assert limits.outbound.total == private + 100 * KB
    for conn in members[:-1]:
        conn.drain()
    assert limits.outbound.total == 100 * KB + 70 * KB
    members[-1].drain()
    assert limits.outbound.total == 0


@pytest.mark.unit
async def test_past_the_total_the_longest_stalled_go_first() -> None:
    """Three connections stall one after another with 400 KB each; a 1 MB total drops the
    first (1013, aborted at once), not the others."""
    limits = _limits(total=1024 * KB, send_budget=2048 * KB)
    first, second, third = (Socket(limits) for _ in range(3))
    for conn in (first, second, third):
        conn.send_frame(_frame(400 * KB))
        conn.fill()
    assert first.closed_with == CloseCode.OVERLOADED and first.aborted
    assert second.closed_with is None and third.closed_with is None


@pytest.mark.unit
async def test_output_without_progress_is_closed_then_aborted() -> None:
    """A connection whose transport stays full for send_timeout_s is closed with 1013, and
    aborted close_timeout_s later when it does not finish the closing handshake."""
    limits = _limits(timeout=0.2, close_timeout_s=0.2)
    conn = Socket(limits)
    conn.send_frame(_frame(100 * KB))
    conn.fill()
    await eventually(lambda: conn.aborted, "the connection to be aborted", timeout=5)
    assert conn.closed_with == CloseCode.OVERLOADED


@pytest.mark.unit
async def test_asgi_queue_and_frame_in_flight_count() -> None:
    """Under an ASGI server whose send does not return (its client does not read), the queued
    frames and the one being sent count: past the budget, 1013."""
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sending = asyncio.Event()

    async def send(message: Any) -> None:
        sending.set()
        await stuck

    conn = AsgiConnection(UpgradeRequest("/ws/fabric/t"), None, "t", send,  # type: ignore[arg-type]
                          limits=_limits())
    conn.send_frame(_frame(600 * KB))
    await asyncio.wait_for(sending.wait(), 5)  # the writer took it and waits in send
    conn.send_frame(_frame(300 * KB))
    assert conn.close_code is None
    conn.send_frame(_frame(200 * KB))
    assert conn.close_code == CloseCode.OVERLOADED
    await conn.stop_writer()


@pytest.mark.parametrize("size", [64 * KB, 1024 * KB])
async def test_large_messages_cost_their_size(transport: str, size: int) -> None:
    """With 1 KB per token, a rate of 50/s and a burst of 200, a new connection may send one
    large message (it goes into debt) but the next one, at once, is rate limited (4429)."""
    async with running_server(transport, message_rate=50, message_burst=200,
                              message_cost_bytes=1024, max_message_size=2 << 20) as srv:
        async with connect(f"{srv.ws}/ws/fabric/cost", max_size=None) as ws:
            await ws.recv()
            junk = b"\x09" + b"\0" * size  # an unknown y-websocket message type: ignored
            await ws.send(junk)
            await ws.send(junk)
            code = None
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except Exception:
                code = ws.close_code
            assert code == 4429
