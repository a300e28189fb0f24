"""The store writer (store/writer.py): group commit, flush and stop, what a failing store
shows — on the memory store, with a store wrapper that counts or fails transactions."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.errors import StoreError
from captify_ws.store.memory import MemoryStore
from captify_ws.store.writer import MERGE_QUEUE_AT, StoreWriter
from tests.polling import eventually

pytestmark = pytest.mark.unit


class CountingStore(MemoryStore):
    """The memory store, counting transactions; ``failing`` makes the next ones raise."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[int] = []
        self.failing = False
        self.compactions: list[str] = []

    async def append_updates(self, entries: Sequence[tuple[str, bytes]],
                             who: Mapping[str, Collection[str]] | None = None) -> None:
        if self.failing:
            raise StoreError("disk on fire")
        self.transactions.append(len(entries))
        await super().append_updates(entries, who)

    async def compact(self, document_id: str) -> int:
        self.compactions.append(document_id)
        return await super().compact(document_id)


def _edits(count: int, prefix: str = "e") -> tuple[list[bytes], str]:
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for index in range(count):
        text += f"{prefix}{index};"
    return updates, str(text)


async def _stored_text(store: MemoryStore, document_id: str) -> str:
    stored = await store.load(document_id)
    assert stored is not None, f"{document_id} is not stored"
    doc: Doc[Any] = Doc()
    doc.apply_update(stored.as_update())
    return str(doc.get("t", type=Text))


async def test_a_burst_is_one_transaction() -> None:
    """Updates enqueued in one turn of the loop are committed together, not one by one."""
    store = CountingStore()
    writer = StoreWriter(store)
    writer.start()
    updates, text = _edits(200)
    for update in updates:
        writer.enqueue("doc", update)
    await writer.flush()
    assert store.transactions == [200]
    assert await _stored_text(store, "doc") == text
    await writer.stop()


async def test_batches_are_bounded_by_max_batch() -> None:
    """No transaction holds more than max_batch updates; all of them are written in order."""
    store = CountingStore()
    writer = StoreWriter(store, max_batch=30)
    writer.start()
    updates, text = _edits(100)
    for update in updates:
        writer.enqueue("doc", update)
    await writer.flush()
    assert store.transactions == [30, 30, 30, 10]
    assert await _stored_text(store, "doc") == text
    await writer.stop()


async def test_flush_returns_once_everything_before_it_is_committed() -> None:
    """After flush() the store holds every update enqueued before the call, even within a
    commit window that would otherwise delay the write."""
    store = CountingStore()
    writer = StoreWriter(store, commit_interval_s=30.0)
    writer.start()
    first, _ = _edits(1, "a")
    writer.enqueue("doc", first[0])
    await writer.flush()
    updates, text = _edits(5, "b")
    for update in updates:
        writer.enqueue("other", update)
    await writer.flush()  # the 30 s window is cut short by the waiter
    assert await _stored_text(store, "other") == text
    assert writer.pending == 0
    await writer.stop()


async def test_stop_writes_what_is_queued() -> None:
    """Stopping (the server closing) commits everything still queued and says so."""
    store = CountingStore()
    writer = StoreWriter(store, commit_interval_s=30.0)
    writer.start()
    updates, text = _edits(20)
    for update in updates:
        writer.enqueue("doc", update, who="user:ann")
    assert await writer.stop() is True
    assert await _stored_text(store, "doc") == text
    (entry,) = await store.read_feed(0, 10)
    assert entry.document_id == "doc" and "user:ann" in str(entry.who)


async def test_a_failing_store_shows_its_error_and_loses_nothing() -> None:
    """While the store fails, writer.error names the failure and the updates stay queued;
    when it recovers they are all written and the error clears."""
    store = CountingStore()
    store.failing = True
    writer = StoreWriter(store, retry_max_s=0.05)
    writer.start()
    updates, text = _edits(10)
    for update in updates:
        writer.enqueue("doc", update)
    await eventually(lambda: writer.error == "disk on fire", "the error to show")
    assert writer.pending == 10
    assert await store.load("doc") is None
    store.failing = False
    await writer.flush()
    assert writer.error is None and writer.pending == 0
    assert await _stored_text(store, "doc") == text
    await writer.stop()


async def test_stop_with_a_dead_store_says_what_is_left(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """A store that never recovers: stop() gives up after its timeout, returns False and logs
    how many updates were not written."""
    store = CountingStore()
    store.failing = True
    writer = StoreWriter(store, retry_max_s=0.05)
    writer.start()
    updates, _ = _edits(3)
    for update in updates:
        writer.enqueue("doc", update)
    with caplog.at_level(logging.ERROR, logger="captify_ws.store"):
        assert await writer.stop(timeout=0.3) is False
    assert any("3 updates not written" in record.getMessage() for record in caplog.records)


async def test_a_long_outage_merges_the_queue_per_document() -> None:
    """Past MERGE_QUEUE_AT queued updates during an outage, the queue holds one merged
    update per document (memory in proportion to documents, not keystrokes), and what is
    written after recovery is every edit."""
    store = CountingStore()
    store.failing = True
    writer = StoreWriter(store, retry_max_s=0.02)
    writer.start()
    a_updates, a_text = _edits(MERGE_QUEUE_AT // 2 + 1, "a")
    b_updates, b_text = _edits(MERGE_QUEUE_AT // 2, "b")
    for update in a_updates:
        writer.enqueue("a", update)
    for update in b_updates:
        writer.enqueue("b", update)
    await eventually(lambda: writer.pending == 2, "the queue to be merged", timeout=20)
    store.failing = False
    await writer.flush()
    assert store.transactions == [2]
    assert await _stored_text(store, "a") == a_text
    assert await _stored_text(store, "b") == b_text
    await writer.stop()


async def test_a_long_log_is_compacted() -> None:
    """A document whose log reaches compact_after entries is compacted after the commit."""
    store = CountingStore()
    writer = StoreWriter(store, compact_after=5, max_batch=1)
    writer.start()
    writer.note_loaded("doc", 0)
    updates, text = _edits(6)
    for update in updates:
        writer.enqueue("doc", update)
    await writer.flush()
    await eventually(lambda: store.compactions == ["doc"], "the compaction")
    stored = await store.load("doc")
    assert stored is not None and stored.snapshot is not None
    assert await _stored_text(store, "doc") == text
    await writer.stop()


async def test_on_stored_reports_each_document_of_a_commit() -> None:
    """The on_store hook hears (document, updates, bytes) per document of each commit."""
    store = CountingStore()
    writer = StoreWriter(store)
    reports: list[tuple[str, int, int]] = []
    writer.on_stored = lambda *report: reports.append(report)
    writer.start()
    a_updates, _ = _edits(3, "a")
    b_updates, _ = _edits(2, "b")
    for update in a_updates:
        writer.enqueue("a", update)
    for update in b_updates:
        writer.enqueue("b", update)
    await writer.flush()
    assert sorted(reports) == [("a", 3, sum(map(len, a_updates))),
                               ("b", 2, sum(map(len, b_updates)))]
    await writer.stop()
