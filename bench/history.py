"""What history costs: server CPU per update and store bytes per 10,000 updates with automatic
versions on and off, the time to get and restore a version of a 1 MB document, and what keeping
deleted content (Yjs snapshots without garbage collection) would cost instead.

    .venv/bin/python bench/history.py            # prints JSON lines

10,000 typing-sized updates (one to a few characters, 10 documents) go through a real server's
rooms, group commit and SQLite store (``synchronous=full``). "versions on": automatic versions
every 0.5 s of continuous editing (``version_max_interval_s``; the default is 600 s, so this is
a pessimistic rate); "off": ``version_idle_s=0``. The change feed is written in both (it is the
store's, not optional).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

from captify_ws.config import Settings
from captify_ws.rooms.member import SERVER_ORIGIN
from captify_ws.server import Server

UPDATES = 10_000
DOCUMENTS = 10


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _typing(seed: int) -> list[list[bytes]]:
    """Per document, the updates of someone typing (and sometimes deleting)."""
    rand = random.Random(seed)
    out: list[list[bytes]] = []
    for _ in range(DOCUMENTS):
        doc: Doc[Any] = Doc()
        text = doc.get("text", type=Text)
        updates: list[bytes] = []
        doc.observe(lambda event, sink=updates: sink.append(event.update))
        for _ in range(UPDATES // DOCUMENTS):
            if len(text) > 10 and rand.random() < 0.1:
                at = rand.randrange(len(text) - 2)
                del text[at:at + 2]
            else:
                text.insert(rand.randint(max(0, len(text) - 20), len(text)),
                            rand.choice("abcdefgh ") * rand.randint(1, 3))
        out.append(updates)
    return out


def _bytes(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    tables = {name: int(size) for name, size in db.execute(
        "SELECT name, sum(pgsize) FROM dbstat GROUP BY name")}
    db.close()
    return {"file": path.stat().st_size,
            "feed": tables.get("captify_feed", 0) + tables.get("captify_feed_by_document", 0),
            "versions": tables.get("captify_versions", 0)
            + tables.get("sqlite_autoindex_captify_versions_1", 0)}


async def updates_run(versions: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="captify-history-bench-"))
    path = folder / "h.db"
    settings = Settings(port=0, store=f"sqlite:///{path}", room_grace_s=60,
                        version_idle_s=0.25 if versions else 0, version_max_interval_s=0.5)
    server = Server(settings)
    await server.start()
    streams = _typing(7)
    rooms = []
    for index in range(DOCUMENTS):
        room = await server.rooms.acquire(f"doc-{index}")
        room.holds += 1
        rooms.append(room)
    started_cpu, started = _cpu(), time.perf_counter()
    for step in range(UPDATES // DOCUMENTS):
        for room, updates in zip(rooms, streams, strict=True):
            room.apply_update(updates[step], SERVER_ORIGIN)
        if step % 10 == 9:
            await asyncio.sleep(0.005)  # typing: ~100 updates a second per document
    await server.writer.flush()
    await asyncio.sleep(0.6)  # the last automatic versions
    cpu, wall = _cpu() - started_cpu, time.perf_counter() - started
    versions_taken = 0
    for index in range(DOCUMENTS):
        versions_taken += len(await server.history.list_versions(f"doc-{index}", limit=1000))
    for room in rooms:
        room.holds -= 1
    await server.stop()
    return {"bench": "history-updates", "versions": "on" if versions else "off",
            "updates": UPDATES, "documents": DOCUMENTS, "versions_taken": versions_taken,
            "cpu_us_per_update": round(cpu / UPDATES * 1e6, 1), "wall_s": round(wall, 2),
            "store_bytes": _bytes(path)}


async def big_document() -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="captify-history-bench-"))
    settings = Settings(port=0, store=f"sqlite:///{folder}/big.db", version_idle_s=0)
    server = Server(settings)
    await server.start()
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    text += "".join(random.Random(1).choice("abcdefghij \n") for _ in range(1_000_000))
    await server.apply_update("big", doc.get_update())
    first = await server.history.create_version("big", "1 MB")
    before = doc.get_state()
    for index in range(200):
        at = (index * 4999) % (len(text) - 10)
        del text[at:at + 5]
        text.insert(at, f"<{index}>")
    await server.apply_update("big", doc.get_update(before))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    version = await server.history.get_version("big", first.number)
    timings["get_state_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    await server.history.version_content("big", first.number)
    timings["get_text_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    await server.history.restore_version("big", first.number)
    timings["restore_ms"] = (time.perf_counter() - started) * 1000
    await server.stop()
    return {"bench": "history-1mb", "state_bytes": len(version.state),
            **{key: round(value, 1) for key, value in timings.items()}}


def deleted_content() -> dict[str, Any]:
    """A document typed to 200 KB, then half deleted: its state garbage-collected (what a
    version stores) and without garbage collection (what Yjs snapshots need kept)."""
    out: dict[str, Any] = {"bench": "history-gc"}
    for skip_gc in (False, True):
        doc: Doc[Any] = Doc(skip_gc=skip_gc)
        text = doc.get("text", type=Text)
        rand = random.Random(3)
        for _ in range(20_000):
            text.insert(len(text), "".join(rand.choice("abcdefgh ") for _ in range(10)))
        for _ in range(10_000):
            at = rand.randrange(max(1, len(text) - 10))
            del text[at:at + 10]
        out["no_gc_bytes" if skip_gc else "gc_bytes"] = len(doc.get_update())
    return out


async def main() -> None:
    for versions in (False, True):
        print(json.dumps(await updates_run(versions)), flush=True)
    print(json.dumps(await big_document()), flush=True)
    print(json.dumps(deleted_content()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
