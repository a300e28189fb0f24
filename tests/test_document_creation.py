"""One client cannot create documents without end (issue 13.9): new documents per user (or per
address, anonymous) are rate-limited with 4429, and nothing per document stays in memory
after it unloads."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import jwt
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import captify_ws
from captify_ws.protocol import ywebsocket
from captify_ws.store import store_from_url
from tests.helpers import RunningServer, running_server

SECRET = "creation-test-secret-0123456789abcdef"


def _update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def open_document(srv: RunningServer, name: str, query: str = "") -> int | None:
    """Open ``name`` over y-websocket and write to it: ``None`` when admitted (and the write
    answered), else the close code."""
    async with connect(f"{srv.ws}/ws/fabric/{name}{query}") as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)  # the server's sync step 1
            await ws.send(ywebsocket.encode_sync_update(_update(name)))
            await ws.send(ywebsocket.encode_sync_step1(b"\x00"))
            while (await asyncio.wait_for(ws.recv(), 10))[:2] != b"\x00\x01":
                pass
            return None
        except ConnectionClosed:
            return ws.close_code


async def test_anonymous_creation_rate_closes_4429(transport: str) -> None:
    """An anonymous client (one address) opens 30 new documents, then 4429; documents that
    exist still open."""
    async with running_server(transport, document_create_rate=30) as srv:
        for number in range(30):
            assert await open_document(srv, f"new-{number}") is None, number
        assert await open_document(srv, "new-30") == 4429
        assert await open_document(srv, "new-31") == 4429
        assert await open_document(srv, "new-3") is None  # stored: not a creation


async def test_the_rate_is_per_user(transport: str) -> None:
    """JWT users: one past its rate gets 4429, another keeps creating."""
    def token(user: str) -> str:
        return "?token=" + jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET,
                                      algorithm="HS256")

    async with running_server(transport, auth="jwt", jwt_secret=SECRET,
                              document_create_rate=5) as srv:
        for number in range(5):
            assert await open_document(srv, f"a-{number}", token("ann")) is None
        assert await open_document(srv, "a-5", token("ann")) == 4429
        assert await open_document(srv, "b-0", token("bob")) is None


async def test_no_memory_stays_per_unloaded_document(tmp_path: Path) -> None:
    """Twice 500 documents created, written and unloaded on a SQLite store: over the second
    500 the server's own allocations grow by less than 25 KB (< 50 B per document, the noise
    of buffers in flight; the fault: ~1.2 KB per document, the store's id cache alone
    ~160 B)."""
    store = store_from_url(f"sqlite:///{tmp_path}/many.db")
    async with running_server(store=store, room_grace_s=0.01, document_create_rate=0) as srv:

        async def create(prefix: str, count: int) -> None:
            for start in range(0, count, 25):  # 25 clients at a time
                codes = await asyncio.gather(*(open_document(srv, f"{prefix}-{number}")
                                               for number in range(start, start + 25)))
                assert codes == [None] * 25
            deadline = time.monotonic() + 20
            server = srv.server
            while len(server.rooms) or any(server.connections.values()) or \
                    server.writer.pending:
                assert time.monotonic() < deadline, "rooms never unloaded"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            gc.collect()

        await create("warm", 100)
        package = str(Path(captify_ws.__file__).parent)
        only_server = [tracemalloc.Filter(True, f"{package}/*")]
        tracemalloc.start(1)
        try:
            await create("first", 500)  # what stays at all (buffers, caches) is in by now
            before = tracemalloc.take_snapshot().filter_traces(only_server)
            await create("doc", 500)
            after = tracemalloc.take_snapshot().filter_traces(only_server)
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert grown < 25_000, [str(s) for s in after.compare_to(before, "lineno")[:12]]
