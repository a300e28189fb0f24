"""Documents survive restarts, kill -9 and store outages; rooms load once and unload clean."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import connect

from captify_ws.protocol import ywebsocket
from captify_ws.store import store_from_url
from captify_ws.store.base import StoredDocument
from captify_ws.store.sqlite import SqliteStore
from tests.helpers import (
    VENV_BIN,
    JsonClient,
    ServerProcess,
    json_client,
    providers,
    running_server,
)
from tests.polling import eventually
from tests.services import free_port, fresh_database, private_postgres


async def _write_and_read_back(url_before: str, url_after: str, document_id: str) -> str:
    async with connect(url_before) as ws:
        client = JsonClient(ws, document_id)
        await client.expect("connected")
        for word in ("persist ", "me ", "please"):
            await client.edit(word)
        await client.sync()
        return str(client.text)


async def _read(url: str, document_id: str) -> str:
    async with connect(url) as ws:
        client = JsonClient(ws, document_id)
        await client.expect("connected")
        await client.sync()
        return str(client.text)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_restart_keeps_documents(kind: str, tmp_path: Path) -> None:
    """Stop and start again: a fresh client gets identical content (SQLite and PostgreSQL)."""
    def run(store: str) -> None:
        first = ServerProcess(["--port", "0", "--store", store]).start()
        try:
            written = asyncio.run(_write_and_read_back(
                f"{first.ws}/ws/fabric?documentId=keep", "", "keep"))
        finally:
            assert first.stop() == 0
        second = ServerProcess(["--port", "0", "--store", store]).start()
        try:
            assert asyncio.run(_read(f"{second.ws}/ws/fabric?documentId=keep", "keep")) \
                == written == "persist me please"
        finally:
            assert second.stop() == 0

    if kind == "sqlite":
        run(f"sqlite:///{tmp_path}/restart.db")
    else:
        with fresh_database() as url:
            run(url)


def test_default_store_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    """With no --store, documents go to ./data/captify-ws.db and survive a restart."""
    first = ServerProcess(["--port", "0"], cwd=tmp_path).start()
    try:
        asyncio.run(_write_and_read_back(f"{first.ws}/ws/fabric?documentId=d", "", "d"))
    finally:
        first.stop()
    assert (tmp_path / "data" / "captify-ws.db").exists()
    second = ServerProcess(["--port", "0"], cwd=tmp_path).start()
    try:
        assert asyncio.run(_read(f"{second.ws}/ws/fabric?documentId=d", "d")) == \
            "persist me please"
    finally:
        second.stop()


async def test_kill_9_during_a_burst_loses_nothing(tmp_path: Path) -> None:
    """kill -9 while 4 providers type; after restart and reconnect, providers and store hold
    every token any provider typed."""
    port = free_port()
    store = f"sqlite:///{tmp_path}/crash.db"
    server = ServerProcess(["--port", str(port), "--store", store]).start()
    names = ["p0", "p1", "p2", "p3"]
    async with providers() as repl:
        for name in names:
            await repl.call("open", name=name, url=f"ws://127.0.0.1:{port}/ws/fabric",
                            doc="crash")
        await asyncio.gather(*(repl.call("waitSynced", name=n) for n in names))
        burst = asyncio.gather(*(repl.call("insertTokens", name=n, count=150, seed=i + 1,
                                           delayMs=4, wait=60)
                                 for i, n in enumerate(names)))

        async def under_way() -> bool:  # some of the 600 tokens typed, most not yet
            return (await repl.call("snapshot", name="p0"))["text"].count(";") >= 40

        await eventually(under_way, "the burst to be under way", interval=0.01)
        server.kill9()
        await burst  # providers keep typing offline
        server = ServerProcess(["--port", str(port), "--store", store]).start()
        try:
            await asyncio.gather(*(repl.call("waitSynced", name=n, timeout=30000, wait=40)
                                   for n in names))
            expected = {f"{n}:{i};" for n in names for i in range(150)}

            async def converged() -> str | None:
                texts = [(await repl.call("snapshot", name=n))["text"] for n in names]
                if all(t == texts[0] for t in texts) and all(tok in texts[0] for tok in expected):
                    return texts[0]
                return None

            text = await eventually(converged, "providers to converge", timeout=20,
                                    interval=0.1)

            async def committed() -> bool:  # group commit has run; then crash again
                return await _stored_text(store, "crash") == text

            await eventually(committed, "the store to hold every token", interval=0.1)
            server.kill9()
        finally:
            server.stop()
    assert await _stored_text(store, "crash") == text


async def _stored_text(url: str, document_id: str) -> str | None:
    """The text of a document as the SQLite store at ``url`` holds it now."""
    stored = SqliteStore(url)
    await stored.open()
    try:
        loaded = await stored.load(document_id)
    finally:
        await stored.close()
    if loaded is None:
        return None
    doc: Doc[Any] = Doc()
    doc.apply_update(loaded.as_update())
    return str(doc.get("text", type=Text))


def test_api_write_is_stored_before_the_call_returns(tmp_path: Path) -> None:
    """POST …/updates answers only once stored: kill -9 right after loses nothing."""
    store = f"sqlite:///{tmp_path}/api.db"
    server = ServerProcess(["--port", "0", "--store", store, "--api-key", "k"]).start()
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "written by the backend")
    response = httpx.post(f"{server.http}/api/v1/documents/api-doc/updates",
                          content=doc.get_update(), timeout=10,
                          headers={"Authorization": "Bearer k",
                                   "Content-Type": "application/octet-stream"})
    assert response.json() == {"documentId": "api-doc", "stored": True}
    server.kill9()
    server = ServerProcess(["--port", "0", "--store", store, "--api-key", "k"]).start()
    try:
        got = httpx.get(f"{server.http}/api/v1/documents/api-doc", timeout=10,
                        headers={"Authorization": "Bearer k"}).json()
        check: Doc[Any] = Doc()
        check.apply_update(base64.b64decode(got["update"]))
        assert str(check.get("text", type=Text)) == "written by the backend"
        listed = httpx.get(f"{server.http}/api/v1/documents", timeout=10,
                           headers={"Authorization": "Bearer k"}).json()
        assert listed == {"documents": ["api-doc"]}
        bad = httpx.post(f"{server.http}/api/v1/documents/api-doc/updates", timeout=10,
                         content=b"\x05\x05\x05", headers={"Authorization": "Bearer k"})
        assert bad.status_code == 400 and "not a valid Yjs update" in bad.json()["error"]
        deleted = httpx.delete(f"{server.http}/api/v1/documents/api-doc", timeout=10,
                               headers={"Authorization": "Bearer k"})
        assert deleted.json() == {"deleted": True}
        assert httpx.get(f"{server.http}/api/v1/documents/api-doc", timeout=10,
                         headers={"Authorization": "Bearer k"}).status_code == 404
    finally:
        server.stop()


class SlowStore(SqliteStore):
    """The real SQLite store, with a slow load: joiners arrive while it is still loading."""

    async def load(self, document_id: str) -> StoredDocument | None:
        await asyncio.sleep(0.5)
        return await super().load(document_id)


async def test_concurrent_joiners_wait_for_one_load(tmp_path: Path) -> None:
    """Many clients joining a stored document at the same moment all see its content at once."""
    url = f"sqlite:///{tmp_path}/slow.db"
    seed = store_from_url(url)
    await seed.open()
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "already here")
    await seed.append_updates([("popular", doc.get_update())])
    await seed.close()
    store = SlowStore(url)
    async with running_server(store=store) as srv, providers() as repl:
        async def json_first_sync(index: int) -> str:
            async with json_client(srv, "popular", f"j{index}") as client:
                await client.sync()
                return str(client.text)

        names = [f"p{i}" for i in range(10)]
        for name in names:
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="popular")
        texts = await asyncio.gather(*(json_first_sync(i) for i in range(20)))
        assert texts == ["already here"] * 20
        await asyncio.gather(*(repl.call("waitSynced", name=n) for n in names))
        for name in names:
            assert (await repl.call("snapshot", name=name))["text"] == "already here"


async def test_rooms_unload_after_many_documents(tmp_path: Path) -> None:
    """Opening and closing 1,000 documents leaves 0 rooms loaded."""
    # One client creating 1,000 documents at once is what document_create_rate refuses
    # (tests/test_document_creation.py); here the subject is unloading.
    async with running_server(store=store_from_url(f"sqlite:///{tmp_path}/many.db"),
                              room_grace_s=0.05, document_create_rate=0) as srv:
        async def visit(index: int) -> None:
            async with json_client(srv, f"doc-{index}", f"c{index}") as client:
                if index % 10 == 0:
                    await client.edit(f"text {index}")
                await client.sync()

        for start in range(0, 1000, 50):
            await asyncio.gather(*(visit(i) for i in range(start, start + 50)))
        await eventually(lambda: len(srv.server.rooms) == 0, "every room to unload",
                         timeout=15)
        assert srv.server.get_connection_count() == 0
        assert len(await srv.server.store.list_documents()) == 100


async def test_connect_disconnect_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    """2,000 connect/disconnect cycles (JSON and y-websocket, with presence) leave no
    connections, rooms or awareness entries."""
    async with running_server(store=store_from_url(f"sqlite:///{tmp_path}/cycles.db"),
                              room_grace_s=0.05) as srv:
        watcher_doc = "cycle-doc"
        async with json_client(srv, watcher_doc, "watcher"):
            async def json_cycle(index: int) -> None:
                async with json_client(srv, watcher_doc, f"j{index}") as client:
                    await client.send({"type": "awareness", "documentId": watcher_doc,
                                       "data": {"n": index}})

            async def yws_cycle(index: int) -> None:
                async with connect(f"{srv.ws}/ws/fabric/{watcher_doc}") as ws:
                    await ws.recv()  # the server's sync step 1
                    entry = ywebsocket.AwarenessEntry(10_000 + index, 1,
                                                      json.dumps({"n": index}))
                    await ws.send(ywebsocket.encode_awareness([entry]))

            for start in range(0, 2000, 40):
                await asyncio.gather(*(json_cycle(i) if i % 2 else yws_cycle(i)
                                       for i in range(start, start + 40)))
            room = srv.server.rooms.get(watcher_doc)
            assert room is not None
            # only the watcher stays, with no presence
            await eventually(lambda: len(room) == 1 and len(room.presence) == 0,
                             "the cycles' members and presence to go")
        await eventually(lambda: len(srv.server.rooms) == 0, "every room to unload")
        assert srv.server.get_connection_count() == 0


def test_postgres_unreachable_at_start_is_one_line() -> None:
    """serve exits with one line naming the store URL when PostgreSQL is not there."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--port", "0", "--store",
                             url], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("captify-ws:")]
    assert len(lines) == 1 and url in lines[0], result.stderr
    assert "Traceback" not in result.stderr


async def test_postgres_outage_while_running() -> None:
    """PostgreSQL goes away: clients keep editing, /readyz says 503 why, and everything
    pending is written when it returns."""
    with private_postgres() as pg:
        async with running_server(store=store_from_url(pg.url)) as srv, \
                httpx.AsyncClient(timeout=10) as http, \
                json_client(srv, "outage", "a") as a, json_client(srv, "outage", "b") as b:
            await a.edit("before;")
            b.apply(await b.expect("update"))
            assert (await http.get(f"{srv.http}/readyz")).status_code == 200
            pg.stop()
            for index in range(20):
                await a.edit(f"during{index};")
                b.apply(await b.expect("update"))  # relaying goes on without the store
            assert str(b.text) == str(a.text)

            async def outage_reported() -> httpx.Response | None:
                ready = await http.get(f"{srv.http}/readyz")
                return ready if ready.status_code == 503 else None

            ready = await eventually(outage_reported, "readyz to report the outage",
                                     timeout=15, interval=0.2)
            assert "store" in " ".join(ready.json()["reasons"])
            pg.start()
            writer = srv.server.writer
            await eventually(lambda: not writer.pending and writer.error is None,
                             "pending writes to be flushed", timeout=30, interval=0.2)
            assert (await http.get(f"{srv.http}/readyz")).status_code == 200
            expected = str(a.text)
        check = store_from_url(pg.url)
        await check.open()
        loaded = await check.load("outage")
        await check.close()
        assert loaded is not None
        doc: Doc[Any] = Doc()
        doc.apply_update(loaded.as_update())
        assert str(doc.get("text", type=Text)) == expected
