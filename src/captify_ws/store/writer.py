"""Group commit: updates accepted from clients are appended in batches, off the hot path.

The hot path only appends ``(document_id, update)`` to a list. One writer task takes everything
that has accumulated and appends it in one transaction; while that transaction runs, the next
batch accumulates, so a burst of N updates costs far fewer than N transactions and nobody waits
for the disk to relay an edit.

When the store fails, the batch stays queued and is retried with backoff (clients keep editing
in memory); queued updates of one document are merged into one when the queue grows, so an
outage costs memory in proportion to the documents touched, not the keystrokes. ``flush`` waits
until everything queued before it is committed: the server API uses it so that a write through
the API is durable before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from pycrdt import merge_updates

from captify_ws.backoff import Backoff
from captify_ws.store.base import DocumentStore

logger = logging.getLogger("captify_ws.store")

#: Queue length past which queued updates are merged per document.
MERGE_QUEUE_AT: Final = 5000


class StoreWriter:
    """The one task that writes updates to the store. See the module docstring."""

    def __init__(self, store: DocumentStore, *, max_batch: int = 2000,
                 compact_after: int = 500, retry_max_s: float = 5.0,
                 commit_interval_s: float = 0.0,
                 on_commit: Callable[[int, float], None] | None = None) -> None:
        self.store = store
        self._max_batch = max_batch
        self._commit_interval_s = commit_interval_s
        self._compact_after = compact_after
        self._retry_max_s = retry_max_s
        self._on_commit = on_commit
        #: (document_id, update, sequence of the oldest enqueue it stands for, who made it:
        #: a label or several), oldest first
        self._queue: list[tuple[str, bytes, int, str | frozenset[str] | None]] = []
        self._enqueued = 0   # sequence of the last enqueued update
        self._committed = 0  # every update up to this sequence is committed
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._log_lengths: dict[str, int] = {}
        self._compact_due: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # someone waits in flush(): commit without the window
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        #: called after each commit with (document_id, updates, bytes) per document (hooks)
        self.on_stored: Callable[[str, int, int], None] | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="captify-store-writer")

    async def stop(self, timeout: float = 10.0) -> bool:
        """Write what is queued (waiting up to ``timeout``) and stop; ``False`` if some is left."""
        done = True
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            done = False
            logger.error("store writer stopping with %d updates not written: %s",
                         len(self._queue), self.error)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return done

    def enqueue(self, document_id: str, update: bytes, who: str | None = None) -> None:
        """Queue an update for the next batch. Never blocks, never fails. ``who``: the label
        of who made it, for the change feed (``store/history.py``)."""
        self._enqueued += 1
        self._queue.append((document_id, update, self._enqueued, who))
        if not self._wake.is_set():
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything enqueued before this call is committed."""
        target = self._enqueued
        if self._committed >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._urgent.set()
        self._wake.set()
        await asyncio.shield(future)

    def note_loaded(self, document_id: str, log_length: int) -> None:
        """A room loaded a document whose stored log has ``log_length`` entries."""
        self._log_lengths[document_id] = log_length
        if log_length >= self._compact_after:
            self._compact_due[document_id] = None
            self._wake.set()

    def forget(self, document_id: str) -> None:
        """The document's room unloaded; stop tracking its log length."""
        self._log_lengths.pop(document_id, None)

    def _merge_queue(self) -> None:
        """Merge queued updates per document (the order of Yjs updates does not matter)."""
        per_document: dict[str, tuple[list[bytes], int, set[str]]] = {}
        for document_id, update, sequence, who in self._queue:
            updates, _first, authors = per_document.setdefault(document_id,
                                                               ([], sequence, set()))
            updates.append(update)
            _add_who(authors, who)
        self._queue = [(document_id, updates[0] if len(updates) == 1 else merge_updates(*updates),
                        first, frozenset(authors))
                       for document_id, (updates, first, authors) in per_document.items()]
        logger.warning("store unavailable: merged queued updates into %d, one per document",
                       len(self._queue))

    async def _run(self) -> None:
        backoff = Backoff(max_s=self._retry_max_s)
        last_commit = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The commit window: at most one transaction per interval, so a busy server writes
            # few large batches instead of many small ones (each costs a commit and an fsync).
            # Enqueues during the window only set _wake (nobody waits on it meanwhile), so the
            # hot path never wakes this task; flush() cuts the window short through _urgent.
            wait = last_commit + self._commit_interval_s - time.monotonic()
            if wait > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), wait)
            while self._queue:
                if self.error is not None and len(self._queue) >= MERGE_QUEUE_AT:
                    self._merge_queue()
                batch = self._queue[:self._max_batch]
                started = time.perf_counter()
                try:
                    await self.store.append_updates(
                        [(doc, update) for doc, update, _, _ in batch], _who(batch))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.error is None:
                        logger.error("store write failed, retrying (%d updates waiting): %s",
                                     len(self._queue), exc)
                    self.error = str(exc) or type(exc).__name__
                    await backoff.wait()
                    continue
                last_commit = time.monotonic()
                if self.error is not None:
                    logger.warning("store writes resumed")
                self.error = None
                backoff.reset()
                del self._queue[:len(batch)]
                self._committed = self._queue[0][2] - 1 if self._queue else self._enqueued
                if self._on_commit is not None:
                    self._on_commit(len(batch), time.perf_counter() - started)
                self._count(batch)
                if self.on_stored is not None:
                    self._report(batch, self.on_stored)
                self._release_waiters()
            self._release_waiters()
            self._urgent.clear()
            await self._compact_due_documents()

    def _count(self, batch: list[tuple[str, bytes, int, str | frozenset[str] | None]]) -> None:
        for document_id, _, _, _ in batch:
            length = self._log_lengths.get(document_id)
            if length is not None:
                length += 1
                self._log_lengths[document_id] = length
                if length >= self._compact_after:
                    self._compact_due[document_id] = None

    @staticmethod
    def _report(batch: list[tuple[str, bytes, int, str | frozenset[str] | None]],
                on_stored: Callable[[str, int, int], None]) -> None:
        per_document: dict[str, list[int]] = {}
        for document_id, update, _, _ in batch:
            counts = per_document.setdefault(document_id, [0, 0])
            counts[0] += 1
            counts[1] += len(update)
        for document_id, (updates, size) in per_document.items():
            on_stored(document_id, updates, size)

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if target <= self._committed:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    async def _compact_due_documents(self) -> None:
        while self._compact_due and not self._queue:
            document_id = next(iter(self._compact_due))
            del self._compact_due[document_id]
            try:
                merged = await self.store.compact(document_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("compaction of %r failed, will retry later: %s", document_id, exc)
                return
            if document_id in self._log_lengths:
                self._log_lengths[document_id] = max(0, self._log_lengths[document_id] - merged)


def _add_who(authors: set[str], who: str | frozenset[str] | None) -> None:
    if isinstance(who, str):
        authors.add(who)
    elif who:
        authors.update(who)


def _who(batch: list[tuple[str, bytes, int, str | frozenset[str] | None]]
         ) -> dict[str, set[str]]:
    """Who made a batch's updates, by document."""
    authors: dict[str, set[str]] = {}
    for document_id, _, _, who in batch:
        _add_who(authors.setdefault(document_id, set()), who)
    return authors
