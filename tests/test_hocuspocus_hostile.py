"""Hostile frames on /ws/hocuspocus, on a live server, while honest providers edit: each attack
gets its documented close code (or its document closed), and the honest clients converge."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from pycrdt import Doc, Text, write_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from captify_ws.errors import CloseCode
from captify_ws.protocol import hocuspocus as hp
from captify_ws.protocol.ywebsocket import AwarenessEntry
from tests.attacks import client_frame, open_raw, read_frame
from tests.helpers import ProviderRepl, RunningServer, hocuspocus_providers, running_server

HOOKS = "tests.outside.hocuspocus_hooks"
EXPECTED_CLOSES = {CloseCode.UNAUTHORIZED, CloseCode.RESET_CONNECTION,
                   CloseCode.MESSAGE_TOO_BIG, CloseCode.UNSUPPORTED_DATA}


def _s(text: str) -> bytes:
    return write_message(text.encode())


def token_frame(address: str, token: str) -> bytes:
    return _s(address) + b"\x02\x00" + _s(token)


def update_frame(address: str, update: bytes) -> bytes:
    return hp.FrameEncoder(address).sync_update(update)


def _update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def close_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the server closes; the close code."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


async def next_frame(ws: ClientConnection, address: str, types: tuple[int, ...] = (2, 7),
                     timeout: float = 5) -> bytes:
    """The next frame for ``address`` of one of ``types`` (by default Auth and CLOSE; others,
    keepalives and other documents skipped)."""
    prefix = hp.FrameEncoder(address).prefix
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            if frame.startswith(prefix) and frame[len(prefix)] in types:
                return frame


@contextlib.asynccontextmanager
async def honest_pair(srv: RunningServer) -> AsyncIterator[ProviderRepl]:
    """A v3 and a v4 provider editing the document "honest" for the length of the block."""
    async with hocuspocus_providers() as repl:
        url = f"{srv.ws}/ws/hocuspocus"
        await repl.call("open", name="h3", url=url, doc="honest", impl="v3", token="ann")
        await repl.call("open", name="h4", url=url, doc="honest", impl="v4", token="ben")
        await repl.call("waitSynced", name="h3")
        await repl.call("waitSynced", name="h4")
        edits = asyncio.gather(*(repl.call("randomEdits", name=n, count=60, seed=i + 7,
                                           delayMs=15, wait=60)
                                 for i, n in enumerate(("h3", "h4"))))
        yield repl
        await edits
        deadline = time.monotonic() + 20
        while True:
            a, b = [await repl.call("snapshot", name=n) for n in ("h3", "h4")]
            if (a["text"], a["map"], a["xml"]) == (b["text"], b["map"], b["xml"]):
                break
            assert time.monotonic() < deadline, (a, b)
            await asyncio.sleep(0.1)
        for name in ("h3", "h4"):
            state = await repl.call("waitUnsynced0", name=name)
            assert state["closes"] == [] and state["failures"] == []
        server_doc: Doc = Doc()
        state_update = await srv.server.get_document("honest")
        assert state_update is not None
        server_doc.apply_update(state_update)
        assert str(server_doc.get("text", type=Text)) == a["text"]


HOCUSPOCUS_UPGRADE = ("GET /ws/hocuspocus HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n")


async def _too_big_close_code(port: int) -> int:
    """A 64 MiB sync message on a raw socket: its frame head and first MiB, then the server's
    close code as read on the wire. (websockets' client, sending the whole message, crashes in
    its own ``__aexit__`` on Python 3.11 once the server has closed: asyncio's transport is
    aborted after it was lost.)"""
    message = _s("honest") + b"\x00\x02" + write_message(bytes(64 << 20))
    frame = client_frame(0x2, message[:1 << 20])
    head = bytes((0x82, 0x80 | 127)) + len(message).to_bytes(8, "big")
    reader, writer = await open_raw(port)
    try:
        writer.write(HOCUSPOCUS_UPGRADE.encode())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 101")
        writer.write(head + frame[10:])  # the 64 MiB head, then a masked first MiB
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")
    finally:
        writer.transport.abort()


async def test_named_attacks_get_their_close_codes_while_honest_clients_converge() -> None:
    """Bad address → 4401; unknown type → ignored; 64 MiB → 1009; a flood before a (slow)
    authentication → 4205, by count, by bytes and by documents; a server-internal type or an
    unreadable message on an open document → that document closed, the socket kept."""
    async with running_server(auth=f"{HOOKS}:authenticate") as srv, honest_pair(srv):
        url = f"{srv.ws}/ws/hocuspocus"
        async with connect(url) as ws:
            await ws.send(b"\x05ab")  # an address announcing 5 bytes, with 2
            assert await close_code(ws) == CloseCode.UNAUTHORIZED
        async with connect(url) as ws:
            await ws.send("a text frame")
            assert await close_code(ws) == CloseCode.UNSUPPORTED_DATA
        assert await _too_big_close_code(srv.port) == CloseCode.MESSAGE_TOO_BIG
        for flood in (
            [token_frame("honest", "slow")] + [update_frame("honest", b"\x00\x00")] * 1001,
            [token_frame("honest", "slow")] + [update_frame("honest", bytes(1 << 20))] * 6,
            [token_frame(f"doc-{i}", "slow") for i in range(101)],
        ):
            async with connect(url, max_size=None) as ws:
                started = time.monotonic()
                for frame in flood:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(frame)
                assert await close_code(ws) == CloseCode.RESET_CONNECTION
                assert time.monotonic() - started < 3  # before the slow authenticator answered

        async with connect(url) as ws:
            await ws.send(token_frame("honest", "eve"))
            assert await next_frame(ws, "honest") == hp.FrameEncoder("honest").authenticated(
                read_only=False)
            await ws.send(_s("honest") + b"\x2a")  # type 42: ignored
            await ws.send(_s("honest") + b"\x03")  # query awareness: still answered
            await next_frame(ws, "honest", types=(hp.MESSAGE_AWARENESS,))
            await ws.send(_s("honest") + b"\x06" + _s("to everyone"))  # BroadcastStateless
            closed = await next_frame(ws, "honest")
            assert closed.startswith(_s("honest") + b"\x07")
            assert b"server-internal" in closed
            await ws.send(update_frame("honest", _update("dropped;")))  # closed: dropped
            await ws.send(token_frame("other", "eve"))  # the socket serves other documents
            assert await next_frame(ws, "other") == hp.FrameEncoder("other").authenticated(
                read_only=False)
            await ws.send(_s("other") + b"\x00\x02\x05ab")  # truncated update on an open doc
            assert (await next_frame(ws, "other")).startswith(_s("other") + b"\x07")
            await ws.send(update_frame("honest", b"\x01\x02\x03"))  # not a Yjs update
            await ws.send(token_frame("honest", "eve"))  # a new Token reopens the document
            assert await next_frame(ws, "honest") == hp.FrameEncoder("honest").authenticated(
                read_only=False)
            await ws.send(update_frame("honest", b"\x01\x02\x03"))  # not a Yjs update
            assert (await next_frame(ws, "honest")).startswith(_s("honest") + b"\x07")
        assert "dropped;" not in str(srv.server.rooms.get("honest").doc.get("text", type=Text))


def _mutations(rng: random.Random, valid: list[bytes]) -> bytes:
    frame = bytearray(rng.choice(valid))
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.4 and frame:
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        elif kind < 0.6:
            frame = frame[:rng.randrange(len(frame) + 1)]
        elif kind < 0.8:
            frame[rng.randrange(len(frame) + 1):0] = rng.randbytes(rng.randint(1, 8))
        else:
            frame = bytearray(rng.randbytes(rng.randint(0, 24)))
    return bytes(frame)


async def test_random_frames_never_reach_the_honest_clients() -> None:
    """Seeded random and mutated frames from many sockets: each socket stays open or closes
    with a documented code, and the honest providers converge with the server."""
    valid = [token_frame("honest", "mallory"), token_frame("x\0s", "mallory"),
             update_frame("honest", _update("evil;")), _s("honest") + b"\x00\x00\x01\x00",
             hp.FrameEncoder("honest").awareness([]), _s("honest") + b"\x03",
             _s("honest") + b"\x05" + _s("{}"), _s("honest") + b"\x07", b"\x0a"]
    codes: list[Any] = []
    async with running_server(auth=f"{HOOKS}:authenticate") as srv, honest_pair(srv):
        for seed in range(24):
            rng = random.Random(seed)
            async with connect(f"{srv.ws}/ws/hocuspocus") as ws:
                await ws.send(token_frame("honest", "mallory"))
                for _ in range(40):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(_mutations(rng, valid))
                await ws.close()
                codes.append(ws.close_code)
    assert set(codes) <= EXPECTED_CLOSES | {CloseCode.NORMAL}, codes
    assert set(codes) & EXPECTED_CLOSES  # the mutations did hit the codecs' refusals


async def test_preauth_queue_is_released_when_a_document_closes_while_draining() -> None:
    """Frames queued before authentication count against the socket's bounds until they are
    handled or dropped: a document closed while its queue drains (an oversized presence state)
    gives its share back, so the next document can queue as many again."""
    async with running_server(auth=f"{HOOKS}:authenticate", max_awareness_size=1024) as srv:
        big = hp.FrameEncoder("q").awareness([AwarenessEntry(1, 1, '"' + "x" * 2000 + '"')])
        async with connect(f"{srv.ws}/ws/hocuspocus") as ws:
            await ws.send(token_frame("q", "slow"))
            await ws.send(big)
            for _ in range(998):
                await ws.send(update_frame("q", b"\x00\x00"))
            closed = await next_frame(ws, "q", timeout=10)  # after Authenticated
            if closed[len(_s("q"))] == hp.MESSAGE_AUTH:
                closed = await next_frame(ws, "q", timeout=10)
            assert closed.startswith(_s("q") + b"\x07") and b"presence state" in closed
            await ws.send(token_frame("r", "slow"))
            for _ in range(999):
                await ws.send(update_frame("r", b"\x00\x00"))
            assert await next_frame(ws, "r", timeout=10) == hp.FrameEncoder("r").authenticated(
                read_only=False)
            await ws.send(token_frame("q", "eve"))  # the closed document opens afresh
            assert await next_frame(ws, "q") == hp.FrameEncoder("q").authenticated(
                read_only=False)
