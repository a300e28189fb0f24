"""Loading a document built from 20,000 updates: from its raw log, and after compaction.

    .venv/bin/python bench/store_load.py            # prints one JSON line

Compaction merges the log into one snapshot (when the log passes 500 entries while the room is
loaded, and when the room unloads), so the second figure is what loading costs in practice.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

from captify_ws.rooms.document import DocumentRoom
from captify_ws.store.sqlite import SqliteStore


def _updates(count: int) -> list[bytes]:
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    rand = random.Random(42)
    for index in range(count):
        text.insert(rand.randint(0, len(text)), f"{index:06d}" + "x" * 44)
    return updates


async def _load(store: SqliteStore) -> float:
    started = time.perf_counter()
    stored = await store.load("big")
    assert stored is not None
    room = DocumentRoom("big", awareness_flush_s=0.05, awareness_renewal_s=10)
    if stored.snapshot:
        room.load_state(stored.snapshot)
    for update in stored.updates:
        room.load_state(update)
    elapsed = time.perf_counter() - started
    room.close()
    return elapsed


async def main() -> dict[str, Any]:
    updates = _updates(20_000)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"sqlite:///{Path(tmp) / 'load.db'}")
        await store.open()
        await store.append_updates([("big", update) for update in updates])
        raw = min([await _load(store) for _ in range(3)])
        merged = await store.compact("big")
        compacted = min([await _load(store) for _ in range(3)])
        loaded = await store.load("big")
        await store.close()
    assert loaded is not None
    assert loaded.snapshot is not None
    return {"updates": len(updates), "merged": merged,
            "snapshot_bytes": len(loaded.snapshot),
            "load_raw_log_ms": round(raw * 1000, 1),
            "load_after_compaction_ms": round(compacted * 1000, 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
