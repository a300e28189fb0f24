"""What a connection held is freed when it ends, by reference counting alone (issue 13).

picows' read buffer grows to the largest frame a connection received and never shrinks; it
lives as long as the connection's protocol object. While the protocol, its transport and the
connection's listener referred to each other, only a full garbage collection freed them, and an
idle server may not run one for minutes: in CI, one client sending 15 MB messages left the
server at +100-400 MB after it had gone (``test_hostile_load``'s cost-of-a-message kind). Here,
with the collector off, every way a connection can end leaves no protocol object behind.

The asgi transport had the same kind of cycles: uvicorn's protocol (its websockets reader
buffer as large as the largest frame part-way read) <-> the connection (``send``, the
transport access) and protocol -> scope -> its ``captify.transport`` extension -> protocol;
the connection itself lives on as long as its document member, so all four endings left every
asgi protocol for a full collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator

import pytest

from captify_ws.transport.native import BoundedReads
from captify_ws.transport.uvicorn_ws import BoundedWebSocketProtocol
from tests.attacks import client_frame, close_payload, read_frame, upgrade
from tests.helpers import running_server
from tests.polling import eventually

BIG = 2 << 20  # a frame this large grows the read buffer past 2 MiB


def _protocols() -> int:
    return sum(1 for item in gc.get_objects()
               if isinstance(item, BoundedReads | BoundedWebSocketProtocol))


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _peer_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(client_frame(0x2, b"\x00\x00" + b"\x00" * BIG))  # a large sync step 1
    writer.write(client_frame(0x8, close_payload(1000)))
    await writer.drain()
    while (await read_frame(reader))[0] != 0x8:
        pass


async def _peer_resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(client_frame(0x1, b'{"type": "ping", "pad": "' + b"a" * BIG + b'"}'))
    await writer.drain()
    writer.transport.abort()


async def _too_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(client_frame(0x2, b"\x00" * (5 << 20)))  # past max_message_size: 1009
    await writer.drain()
    while (await read_frame(reader))[0] != 0x8:
        pass
    writer.transport.abort()


async def _server_closes_and_lingers(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
    frame = client_frame(0x1, b"[" * 2000 + b"]" * 2000)  # too deep: closed with 4400
    writer.write(client_frame(0x2, b"\x00\x00" + b"\x00" * BIG) + frame)
    await writer.drain()
    while (await read_frame(reader))[0] != 0x8:
        pass
    # no close frame back: the server's socket lingers until its close timeout


ENDINGS: dict[str, Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]] = {
    "the peer closes": _peer_closes,
    "the peer resets": _peer_resets,
    "a frame past the size limit (1009)": _too_big,
    "the server closes, the peer never answers": _server_closes_and_lingers,
}


@pytest.mark.parametrize("transport", ["native", "asgi"])
@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_a_connection_that_ended_leaves_no_protocol_behind(ending: str,
                                                                 transport: str) -> None:
    async with running_server(transport, max_message_size=4 << 20, close_timeout_s=0.5) as srv:
        with _collector_off():
            before = _protocols()
            for _ in range(3):
                reader, writer = await upgrade(srv.port, "memory")
                try:
                    await ENDINGS[ending](reader, writer)
                finally:
                    await eventually(lambda: not any(srv.server.connections.values()),
                                     "the connection to end")
                    writer.transport.abort()
            await eventually(lambda: _protocols() == before,
                             "every protocol object freed without a collection")
