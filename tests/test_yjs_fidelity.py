"""What the server hands out decodes in Yjs to exactly what the connected clients hold —
also after edits that split a surrogate pair, which yrs integrates differently from Yjs
(docs/yjs-interop.md). Real y-websocket providers; the decoding is Yjs's own."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from captify_ws.store.sqlite import SqliteStore
from captify_ws.ydoc import _ASTRAL_SEQUENCE, holds_astral
from tests.helpers import (
    ProviderRepl,
    RunningServer,
    ServerProcess,
    providers,
    running_server,
)
from tests.polling import eventually
from tests.services import REDIS_URL, fresh_database, require_redis

AUTH = {"Authorization": "Bearer k"}


async def converged(repl: ProviderRepl, names: list[str], timeout: float = 15) -> Any:
    """Wait until every named client holds the same text (with formatting); return it."""
    async def same() -> tuple[Any]:
        deltas = [(await repl.call("delta", name=name))["delta"] for name in names]
        assert all(delta == deltas[0] for delta in deltas), deltas
        return (deltas[0],)

    (delta,) = await eventually(same, "the clients to converge", timeout, interval=0.05)
    return delta


async def served(repl: ProviderRepl, srv: RunningServer | ServerProcess,
                 document_id: str) -> dict[str, Any]:
    """What each way of getting the document hands out, decoded by Yjs."""
    name = f"late-{time.monotonic_ns()}"
    await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc=document_id)
    await repl.call("waitSynced", name=name)
    joiner = (await repl.call("delta", name=name))["delta"]
    await repl.call("close", name=name)
    async with connect(f"{srv.ws}/ws/fabric?{urlencode({'documentId': document_id})}") as ws:
        await ws.send(json.dumps({"type": "sync", "documentId": document_id}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "synced":
                synced = message["data"]["update"]
                break
    async with httpx.AsyncClient(timeout=10) as http:
        got = await http.get(f"{srv.http}/api/v1/documents/{document_id}", headers=AUTH)
        assert got.status_code == 200, got.text
    return {
        "sync step 2": joiner,
        "JSON synced": (await repl.call("decode", update=synced))["delta"],
        "GET": (await repl.call("decode", update=got.json()["update"]))["delta"],
    }


async def test_insert_between_surrogate_halves_reaches_late_joiners_as_present_clients_see_it(
        transport: str, tmp_path: Path) -> None:
    """The issue's input: Y.Text 'x👷y', a client inserts 'Z' at UTF-16 index 2. Present
    clients show 'x\\ufffdZ\\ufffdy' (Yjs replaces the split halves); a late joiner, a JSON
    sync, GET and a restarted server serve exactly that."""
    store = f"sqlite:///{tmp_path}/split.db"
    async with providers() as repl:
        async with running_server(transport, api_key="k", store=SqliteStore(store)) as srv:
            for name in ("a", "b"):
                await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="split")
                await repl.call("waitSynced", name=name)
            await repl.call("insert", name="a", index=0, text="x👷y")
            await converged(repl, ["a", "b"])
            await repl.call("insert", name="b", index=2, text="Z")
            present = await converged(repl, ["a", "b"])
            assert present == [{"insert": "x\ufffdZ\ufffdy"}]
            assert await served(repl, srv, "split") == dict.fromkeys(
                ("sync step 2", "JSON synced", "GET"), present)
            for name in ("a", "b"):
                await repl.call("close", name=name)
        async with running_server(transport, api_key="k", store=SqliteStore(store)) as srv:
            assert await served(repl, srv, "split") == dict.fromkeys(
                ("sync step 2", "JSON synced", "GET"), present)


async def test_random_unicode_edits_are_served_as_clients_hold_them(tmp_path: Path) -> None:
    """Generated: three providers edit one Y.Text at once at random UTF-16 indices (splitting
    surrogate pairs, deleting one half, formatting); then a fresh joiner, a JSON sync, GET,
    a restarted server (raw log) and one after compaction all serve what every client holds."""
    store = f"sqlite:///{tmp_path}/random.db"
    names = ["p1", "p2", "p3"]
    for round_ in range(3):
        document_id = f"random-{round_}"
        async with providers() as repl:
            async with running_server(api_key="k", store=SqliteStore(store)) as srv:
                for name in names:
                    await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric",
                                    doc=document_id)
                    await repl.call("waitSynced", name=name)
                await asyncio.gather(*(
                    repl.call("unicodeEdits", name=name, count=40, seed=100 * round_ + i,
                              delayMs=3) for i, name in enumerate(names)))
                present = await converged(repl, names)
                assert "\ufffd" in str(present)  # pairs were split: the case in question
                room = srv.server.rooms.get(document_id)
                assert room is not None and room.ydoc.rebuilds > 0
                assert await served(repl, srv, document_id) == dict.fromkeys(
                    ("sync step 2", "JSON synced", "GET"), present), present
                for name in names:
                    await repl.call("close", name=name)
            async with running_server(api_key="k", store=SqliteStore(store)) as srv:
                assert await served(repl, srv, document_id) == dict.fromkeys(
                    ("sync step 2", "JSON synced", "GET"), present)
            compacting = SqliteStore(store)
            await compacting.open()
            await compacting.compact(document_id)
            await compacting.close()
            async with running_server(api_key="k", store=SqliteStore(store)) as srv:
                assert await served(repl, srv, document_id) == dict.fromkeys(
                    ("sync step 2", "JSON synced", "GET"), present)


async def _store_in_order(store_url: str, document_id: str, updates: list[bytes]) -> None:
    """Append ``updates`` to the store's log one by one, in the order given."""
    store = SqliteStore(store_url)
    await store.open()
    for update in updates:
        await store.append_updates([(document_id, update)])
    await store.close()


async def _served_from_store_and_compacted(repl: ProviderRepl, store_url: str,
                                           document_id: str) -> list[dict[str, Any]]:
    """What a server loading the store serves, then what one loading it compacted serves."""
    got = []
    async with running_server(api_key="k", store=SqliteStore(store_url)) as srv:
        got.append(await served(repl, srv, document_id))
    compacting = SqliteStore(store_url)
    await compacting.open()
    await compacting.compact(document_id)
    await compacting.close()
    async with running_server(api_key="k", store=SqliteStore(store_url)) as srv:
        got.append(await served(repl, srv, document_id))
    return got


async def test_an_update_stored_before_the_one_it_refers_to_is_served_as_clients_hold_it(
        tmp_path: Path) -> None:
    """Instances sharing a store append in the order their writers commit, so the log can hold
    an update before the one it refers to (so can the broker and anti-entropy deliver them):
    here 'Z' between the halves of 👷 before 'x👷y'. Yjs holds the first as pending until the
    second arrives and shows 'x\ufffdZ\ufffdy'; a server loading that log, and one loading it
    compacted, serve exactly that (yrs, left to integrate its pending structs itself, served
    'x\ufffdyZ\ufffd')."""
    base = base64.b64decode("AQEBAAQBBHRleHQGePCfkbd5AA==")  # client 1: 'x👷y'
    between = base64.b64decode("AQECAMQBAQECAVoA")  # client 2: 'Z' at UTF-16 index 2
    store = f"sqlite:///{tmp_path}/reversed.db"
    await _store_in_order(store, "reversed", [between, base])
    expected = [{"insert": "x\ufffdZ\ufffdy"}]
    async with providers() as repl:
        assert (await repl.call("decode", update=base64.b64encode(between).decode()))["pending"]
        assert await _served_from_store_and_compacted(repl, store, "reversed") == [
            dict.fromkeys(("sync step 2", "JSON synced", "GET"), expected)] * 2


async def test_updates_in_any_order_are_served_as_clients_hold_them(tmp_path: Path) -> None:
    """Generated: the updates three providers made while splitting surrogate pairs at random,
    stored in a random order (updates before those they refer to, as instances sharing a
    store may commit them); a server loading them, and one loading them compacted, serve what
    every client holds."""
    names = ["p1", "p2", "p3"]
    for round_ in range(2):
        document_id = f"shuffled-{round_}"
        async with providers() as repl:
            async with running_server(api_key="k") as srv:
                for name in names:
                    await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric",
                                    doc=document_id)
                    await repl.call("waitSynced", name=name)
                await asyncio.gather(*(
                    repl.call("unicodeEdits", name=name, count=30, seed=500 + 10 * round_ + i,
                              delayMs=3) for i, name in enumerate(names)))
                present = await converged(repl, names)
                assert "\ufffd" in str(present)
                made = [base64.b64decode(update) for name in names
                        for update in (await repl.call("madeUpdates", name=name))["updates"]]
                for name in names:
                    await repl.call("close", name=name)
            random.Random(round_).shuffle(made)
            store = f"sqlite:///{tmp_path}/{document_id}.db"
            await _store_in_order(store, document_id, made)
            assert await _served_from_store_and_compacted(repl, store, document_id) == [
                dict.fromkeys(("sync step 2", "JSON synced", "GET"), present)] * 2, present


async def test_instances_serve_what_clients_hold_across_the_cluster() -> None:
    """Generated, across instances (Redis + PostgreSQL): providers on two instances split
    surrogate pairs at random; joiners on both, and on a third instance started afterwards
    (store and anti-entropy), get what every client holds."""
    require_redis()
    prefix = f"test-{secrets.token_hex(4)}"
    with fresh_database() as db:
        args = ["--port", "0", "--store", db, "--broker", REDIS_URL, "--broker-prefix", prefix,
                "--cluster-heartbeat-s", "0.5", "--anti-entropy-s", "1", "--api-key", "k",
                "--room-grace-s", "30"]
        procs = [ServerProcess(args).start(), ServerProcess(args).start()]
        try:
            async with providers() as repl:
                names = ["on-a", "on-b", "on-a2"]
                for name, proc in zip(names, [procs[0], procs[1], procs[0]], strict=True):
                    await repl.call("open", name=name, url=f"{proc.ws}/ws/fabric",
                                    doc="cluster")
                    await repl.call("waitSynced", name=name)
                await asyncio.gather(*(
                    repl.call("unicodeEdits", name=name, count=30, seed=7 + i, delayMs=3)
                    for i, name in enumerate(names)))
                present = await converged(repl, names)
                assert "\ufffd" in str(present)
                procs.append(ServerProcess(args).start())
                for proc in procs:
                    assert await served(repl, proc, "cluster") == dict.fromkeys(
                        ("sync step 2", "JSON synced", "GET"), present)
        finally:
            for proc in procs:
                proc.stop()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xf0", b"\xf4", b"\xf5", b"\x80", b"\xbf", b"\xc0",
                                 "👷".encode(), "é".encode()]), max_size=40))
def test_the_fast_astral_check_answers_as_the_full_one(pieces: list[bytes]) -> None:
    """The memchr prefilter before the regular expression changes no answer: an update
    holds a 4-byte UTF-8 sequence exactly when the expression finds one."""
    update = b"".join(pieces)
    assert holds_astral(update) == (_ASTRAL_SEQUENCE.search(update) is not None)

