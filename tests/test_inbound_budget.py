"""The inbound budget (issue 13): what all connections together hold of messages not received in
full is bounded (``max_inbound_bytes``); past it the connections holding the most are closed
with 1009, and a pair of honest clients on another document goes on unaffected.

Each connection alone is bounded by ``max_message_size``; before the budget, N connections each
part-way through a large message held N times that (the all-attacks run of
``test_hostile_load`` peaked past its RSS bound with 44 such connections over its minute).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from captify_ws.inbound import REFUSAL
from tests.attacks import client_frame, read_frame, upgrade
from tests.helpers import json_client, running_server
from tests.polling import eventually

MESSAGE_LIMIT = 8 << 20
BUDGET = 8 << 20
ATTACKERS = 16
#: what each attacker sends of its message, never the whole of it: 16 x 6 MiB = 96 MiB held
#: without a global bound (and up to twice that in picows' read buffers)
PARTIAL = 6 << 20
CHUNK = 256 << 10


def _fragments(size: int) -> Callable[[int], bytes]:
    """A binary message in 256 KiB fragments that never gets its final frame."""
    fragment = client_frame(0x0, b"\x00" * CHUNK, fin=False)
    first = client_frame(0x2, b"\x00" * CHUNK, fin=False)
    return lambda index: first if index == 0 else fragment


def _one_frame(size: int) -> Callable[[int], bytes]:
    """One 7 MiB binary frame (under the message limit), sent 256 KiB at a time."""
    head = client_frame(0x2, b"", fin=True)[:1] + bytes((0x80 | 127,)) + \
        (7 << 20).to_bytes(8, "big") + b"\x00\x00\x00\x00"  # masked, mask key 0
    chunk = b"\x00" * CHUNK
    return lambda index: head + chunk if index == 0 else chunk


SHAPES: dict[str, Callable[[int], Callable[[int], bytes]]] = {
    "fragments without the final frame": _fragments,
    "one large frame part-way": _one_frame,
}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _close_of(reader: asyncio.StreamReader) -> tuple[int, str] | None:
    """The close frame the server sent, if one is waiting (``None`` while it is open)."""
    with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 0.001)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    return None


@pytest.mark.parametrize("transport", ["native", "asgi"])
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_partial_messages_of_all_connections_are_bounded(transport: str,
                                                               shape: str) -> None:
    """16 connections each part-way through a 6 MiB message, with an 8 MiB budget: the sum held
    never passes the budget, the largest holders are closed with 1009 and the reason, and an
    honest pair on another document keeps converging."""
    async with running_server(transport, max_message_size=MESSAGE_LIMIT,
                              max_inbound_bytes=BUDGET, close_timeout_s=1) as srv, \
            json_client(srv, "honest") as writer, json_client(srv, "honest") as reader:
        budget = srv.server.connection_limits.inbound
        frames = SHAPES[shape](PARTIAL)
        attackers = [await upgrade(srv.port, f"big-{number}") for number in range(ATTACKERS)]
        closes: dict[int, tuple[int, str]] = {}
        rss_start, highest = _rss_mb(), 0
        for index in range(PARTIAL // CHUNK):
            for number, (conn_reader, conn_writer) in enumerate(attackers):
                if number in closes:
                    continue
                close = await _close_of(conn_reader)
                if close is not None:
                    closes[number] = close
                    continue
                with contextlib.suppress(ConnectionError):
                    conn_writer.write(frames(index))
                    await conn_writer.drain()
            highest = max(highest, budget.total)
            assert budget.total <= BUDGET
            if index % 4 == 0:  # the honest pair, on another document, meanwhile
                await writer.edit(f"{index},")
        await writer.edit("end")
        while "end" not in str(reader.text):
            reader.apply(await reader.expect("update"))
        assert str(reader.text) == str(writer.text)
        rss_growth = _rss_mb() - rss_start
        for number, (conn_reader, _) in enumerate(attackers):
            if number not in closes:
                close = await _close_of(conn_reader)
                if close is not None:
                    closes[number] = close
        # At most BUDGET // PARTIAL connections can hold their whole partial message.
        assert len(closes) >= ATTACKERS - BUDGET // PARTIAL, (len(closes), highest)
        assert set(closes.values()) == {(1009, REFUSAL)}, closes
        assert budget.refusals >= len(closes)
        assert BUDGET // 2 < highest <= BUDGET
        # What the server holds for them: the budget, twice over for read buffers that doubled
        # as they grew, and what the test itself allocates; 96-192 MiB without the budget.
        assert rss_growth < 2 * BUDGET / (1 << 20) + 40, rss_growth
        for _, conn_writer in attackers:
            conn_writer.transport.abort()
        await eventually(lambda: budget.total == 0, "every holder forgotten")
