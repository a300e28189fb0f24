"""Limits: each configurable, each closing with the code DESIGN.md names; slow consumers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws.protocol import ywebsocket
from tests.attacks import random_letters
from tests.helpers import ServerProcess, json_client, running_server

UPGRADE = ("GET /ws/fabric/{doc} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n{extra}\r\n")


async def closed_with(ws: Any) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    code: int | None = ws.close_code
    return code


def _update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def test_message_too_big_closes_1009(transport: str) -> None:
    """A message over max_message_size closes 1009; the others carry on."""
    async with running_server(transport, max_message_size=4096) as srv, \
            json_client(srv, "big", "other") as other:
        async with connect(f"{srv.ws}/ws/fabric/big", max_size=None) as ws:
            await ws.recv()
            await ws.send(ywebsocket.encode_sync_update(_update("x" * 8000)))
            assert await closed_with(ws) == 1009
        await other.sync()


async def test_message_rate_closes_4429(transport: str) -> None:
    """A connection sending faster than message_rate (past its burst) closes 4429."""
    async with running_server(transport, message_rate=5, message_burst=20) as srv, \
            connect(f"{srv.ws}/ws/fabric/flood") as ws:
        await ws.recv()
        for _ in range(60):
            await ws.send(ywebsocket.encode_query_awareness())
        assert await closed_with(ws) == 4429
        async with connect(f"{srv.ws}/ws/fabric/flood") as polite:  # others are fine
            await polite.recv()
            for _ in range(5):
                await polite.send(ywebsocket.encode_query_awareness())
                await asyncio.sleep(0.25)
            await polite.send(ywebsocket.encode_sync_step1(b"\x00"))
            assert (await polite.recv())[:2] == b"\x00\x01"


async def test_instance_connection_limit_closes_1013(transport: str) -> None:
    """Past max_connections, new connections close with 1013."""
    async with running_server(transport, max_connections=3) as srv:
        held = [await connect(srv.fabric("full", f"c{i}")) for i in range(3)]
        try:
            for ws in held:
                assert json.loads(await ws.recv())["type"] == "connected"
            async with connect(srv.fabric("full", "late")) as late:
                assert await closed_with(late) == 1013
        finally:
            for ws in held:
                await ws.close()


async def test_per_user_and_per_address_limits_close_4429() -> None:
    """Per user (authenticated) and per client address (via a trusted proxy): 4429."""
    async with running_server(auth="tests.outside.auth_hooks:authenticate",
                              max_connections_per_user=2, max_connections_per_ip=3) as srv:
        url = srv.fabric("lim") + "&ticket=open-sesame"
        held = [await connect(url) for _ in range(2)]
        async with connect(url) as third:
            assert await closed_with(third) == 4429
        for ws in held:
            await ws.close()

    async with running_server(max_connections_per_ip=2) as srv:
        async def via_proxy(client: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(UPGRADE.format(doc="ip", extra=f"X-Forwarded-For: {client}\r\n")
                         .encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            return reader, writer

        first = [await via_proxy("203.0.113.7") for _ in range(2)]
        other = await via_proxy("198.51.100.9")  # another client address is fine
        reader, writer = await via_proxy("203.0.113.7")
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert b"\x88" in data and (4429).to_bytes(2, "big") in data  # a close frame, 4429
        for _, w in [*first, other, (reader, writer)]:
            w.close()


async def test_awareness_size_limit(transport: str) -> None:
    """A presence state over max_awareness_size: close 1009 (y-websocket), error (JSON)."""
    async with running_server(transport, max_awareness_size=256) as srv:
        async with connect(f"{srv.ws}/ws/fabric/aw") as ws:
            await ws.recv()
            big = ywebsocket.AwarenessEntry(7, 1, json.dumps({"blob": "x" * 500}))
            await ws.send(ywebsocket.encode_awareness([big]))
            assert await closed_with(ws) == 1009
        async with json_client(srv, "aw", "j") as client:
            await client.send({"type": "awareness", "documentId": "aw",
                               "data": {"blob": "x" * 500}})
            assert "larger than 256 bytes" in (await client.expect("error"))["message"]
            await client.send({"type": "awareness", "documentId": "aw", "data": {"ok": 1}})
            await client.sync()  # still open


async def test_document_quota(transport: str) -> None:
    """Updates that would take a document past max_document_size are refused."""
    async with running_server(transport, max_document_size=3000) as srv:
        async with json_client(srv, "quota", "j") as client:
            await client.edit("a" * 1000)
            await client.edit("b" * 1500)
            await client.edit("c" * 1500)
            error = await client.expect("error")
            assert "quota" in error["message"]
        async with connect(f"{srv.ws}/ws/fabric/quota") as ws:
            await ws.recv()
            await ws.send(ywebsocket.encode_sync_update(_update("d" * 2000)))
            assert await closed_with(ws) == 1009
        async with json_client(srv, "quota", "check") as check:
            await check.sync()
            assert "c" not in str(check.text) and "d" not in str(check.text)


async def test_large_updates_and_the_quota(transport: str) -> None:
    """Large y-websocket updates (sync update and sync step 2, which the native transport
    checks against the quota from the frame's raw bytes): 300 KB of text within a 1 MB quota is
    applied; 400 KB more (1.2 MB estimated) closes its sender with 1009 and changes nothing."""
    kept = random_letters(300_000, seed=1)
    async with running_server(transport, max_document_size=1 << 20) as srv:
        for step2, document in ((False, "big-quota"), (True, "big-quota-step2")):
            encode = ywebsocket.encode_sync_step2 if step2 else ywebsocket.encode_sync_update
            async with connect(f"{srv.ws}/ws/fabric/{document}", max_size=None) as ws:
                await ws.recv()
                doc: Doc[Any] = Doc()
                text = doc.get("text", type=Text)
                text += kept
                await ws.send(encode(doc.get_update()))
                before = doc.get_state()
                text += random_letters(400_000, seed=2)
                await ws.send(encode(doc.get_update(before)))
                assert await closed_with(ws) == 1009
            async with json_client(srv, document, "check") as check:
                await check.sync()
                assert str(check.text) == kept


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_consumer_is_closed_and_memory_stays_flat() -> None:
    """A client that stops reading while another keeps editing is closed with 1013 once its
    send budget is spent; the server's memory stays flat; the editor is not disturbed."""
    server = ServerProcess(["--port", "0", "--store", "memory", "--send-budget", "1m"]).start()
    assert server.process is not None
    try:
        # A small receive buffer, and no reading: the server's buffers for it fill up.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        writer.write(UPGRADE.format(doc="slow", extra="").encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.transport.pause_reading()
        rss_start = _rss_kb(server.process.pid)
        doc: Doc = Doc()
        text = doc.get("text", type=Text)
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        async with connect(f"{server.ws}/ws/fabric/slow", max_queue=None) as editor:
            await editor.recv()
            samples = []
            for index in range(800):  # 800 × 16 KB inserted then deleted: ~13 MB of traffic
                text.insert(0, f"{index:05d}" + "z" * 16000)
                del text[0:len(text)]
                sent = len(updates)
                while updates:
                    await editor.send(ywebsocket.encode_sync_update(updates.pop(0)))
                for _ in range(sent):  # a well-behaved editor reads its echoes
                    echo = await asyncio.wait_for(editor.recv(), 5)
                    assert echo[:2] == b"\x00\x02"
                if index % 100 == 99:
                    samples.append(_rss_kb(server.process.pid))
        growth_mb = (max(samples) - rss_start) / 1024
        assert growth_mb < 40, (rss_start, samples)
        writer.transport.resume_reading()
        data = b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            while True:
                got = await asyncio.wait_for(reader.read(1 << 20), 5)
                if not got:
                    break
                data += got
        assert (1013).to_bytes(2, "big") + b"too slow to keep up" in data
        writer.close()
    finally:
        server.stop()


async def test_bad_input_never_disturbs_others(transport: str) -> None:
    """Garbage, truncated frames and invalid updates close or answer only their sender."""
    async with running_server(transport) as srv, json_client(srv, "calm", "watcher") as watcher:
        for frame in (b"", b"\x00", b"\x00\x02\xff\xff\xff\xff\xff", b"\x01\x05\x01",
                      b"\x00\x02\x03abc"):
            async with connect(f"{srv.ws}/ws/fabric/calm") as ws:
                await ws.recv()
                await ws.send(frame)
                assert await closed_with(ws) == 1007
        async with connect(f"{srv.ws}/ws/fabric/calm") as ws:
            await ws.recv()
            await ws.send("text on a binary protocol")
            assert await closed_with(ws) == 1007
        await watcher.edit("still fine")
        await watcher.sync()
        assert str(watcher.text) == "still fine"
        assert await watcher.quiet(0.2) == []
        assert srv.server.get_connection_count(document_id="calm") == 1


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=70_000), st.booleans())
def test_peek_update_finds_the_update_from_the_first_bytes(update: bytes, step2: bool) -> None:
    """Where a sync update's (or step 2's) Yjs update starts, read from 16 bytes; other
    messages and wrong lengths answer None."""
    encode = ywebsocket.encode_sync_step2 if step2 else ywebsocket.encode_sync_update
    frame = encode(update)
    start = ywebsocket.peek_update(frame[:16], len(frame))
    assert start is not None and frame[start:] == update
    assert ywebsocket.peek_update(frame[:16], len(frame) + 1) is None
    assert ywebsocket.peek_update(ywebsocket.encode_sync_step1(update)[:16], len(frame)) is None
