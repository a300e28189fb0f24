"""The ``DocumentStore`` protocol: where documents live between restarts.

A document is stored as an optional *snapshot* (one Yjs update holding everything up to some
point) plus a *log* of the Yjs updates appended since, each with a sequence number that only
grows. Loading applies the snapshot, then the log. Compaction merges the log into a new snapshot
in one transaction, so a document built from 20,000 updates loads like a single update.

Implementations: ``memory`` (tests; says what it cannot do), ``sqlite`` (the embedded default),
``postgres`` (shared by every instance of a deployment). Every method may raise
:class:`~captify_ws.errors.StoreError`; none leaves a half-done write behind.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from captify_ws.ydoc import merge_faithfully


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """What the store holds for one document."""

    snapshot: bytes | None
    updates: list[bytes] = field(default_factory=list)

    def as_update(self) -> bytes:
        """The whole document as one Yjs update (snapshot and log merged)."""
        return merge_into_snapshot(self.snapshot, self.updates)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One accepted ProseMirror step; ``version`` is the version it applies to."""

    version: int
    step: str
    client_id: str


@dataclass(frozen=True, slots=True)
class StepLog:
    """What the store holds of a document's step authority."""

    #: the snapshot the log starts from: (version, ProseMirror doc JSON), or None (version 0)
    snapshot: tuple[int, str] | None
    #: steps with version >= the snapshot's version, in order
    steps: list[StepRecord]

    @property
    def version(self) -> int:
        base = self.snapshot[0] if self.snapshot else 0
        return self.steps[-1].version + 1 if self.steps else base


#: append_steps outcomes
APPENDED = "appended"
CONFLICT = "conflict"    # a step for one of these versions exists already
DUPLICATE = "duplicate"  # this change id was applied already


def merge_into_snapshot(snapshot: bytes | None, updates: Sequence[bytes]) -> bytes:
    """Apply a snapshot and updates to a fresh document and encode it again (garbage-collected),
    integrating them as Yjs does (``ydoc.py``: surrogate pairs split by edits)."""
    return merge_faithfully(snapshot, updates)


@runtime_checkable
class DocumentStore(Protocol):
    """Persistent documents. Each method states what it guarantees when it returns."""

    #: the URL as configured, with any password masked; for messages and /readyz
    url: str

    async def open(self) -> None:
        """Connect and create or upgrade the schema.

        Raises :class:`StoreError` naming the URL when the store cannot be reached. Opening a
        store twice, or one written by an older schema version, works.
        """
        ...

    async def close(self) -> None:
        """Release connections. Everything appended before has been committed."""
        ...

    async def check(self) -> None:
        """Raise :class:`StoreError` with the reason if the store cannot serve right now."""
        ...

    async def load(self, document_id: str) -> StoredDocument | None:
        """The snapshot and log of a document, or ``None`` if it was never stored.

        Reflects every append that returned before this call started.
        """
        ...

    async def append_updates(self, entries: Sequence[tuple[str, bytes]],
                             who: Mapping[str, Collection[str]] | None = None) -> None:
        """Append Yjs updates, to one or many documents, in one transaction.

        When this returns, every entry is durable (committed); when it raises, none is.
        ``who``: by document, the labels of who made these updates, for a store that keeps a
        change feed (``store/history.py``); others ignore it.
        """
        ...

    async def compact(self, document_id: str) -> int:
        """Merge the document's log into its snapshot, atomically; returns the entries merged.

        Updates appended concurrently (by this or another instance) are never lost: only the
        entries read inside the compaction's transaction are replaced.
        """
        ...

    async def list_documents(self) -> list[str]:
        """Every stored document id, sorted."""
        ...

    async def delete_document(self, document_id: str) -> bool:
        """Delete a document and its steps; ``True`` if it existed."""
        ...

    async def load_steps(self, document_id: str, since: int = 0) -> StepLog:
        """The step authority's snapshot and the steps from version ``since`` (or from the
        snapshot, whichever is later). Reflects every append that returned before."""
        ...

    async def append_steps(self, document_id: str, version: int, steps: Sequence[str],
                           client_id: str, change_id: str | None = None) -> str:
        """Compare-and-append, in one transaction: steps at ``version``, ``version + 1``, ….

        Returns ``CONFLICT`` and stores nothing if any of these versions is taken (another
        writer, on any instance, got there first), ``DUPLICATE`` and stores nothing if
        ``change_id`` was applied before, else ``APPENDED``.
        """
        ...

    async def find_change(self, document_id: str, change_id: str) -> int | None:
        """The version at which steps with ``change_id`` were appended (the version their
        first step applied to), or ``None``. Reflects every append that returned before."""
        ...

    async def save_step_snapshot(self, document_id: str, version: int, doc: str,
                                 keep_steps: int) -> None:
        """Record the ProseMirror doc at ``version``, and forget all steps but the last
        ``keep_steps`` before it (clients further behind reload the document)."""
        ...

    def forget(self, document_id: str) -> None:
        """The document was unloaded: drop whatever the store keeps in memory for it (so a
        process that sees many documents keeps nothing per document: issue 13.9). Later
        calls for it still work."""
        ...

    async def save_revocation(self, document_id: str, user_id: str, access: str,
                              expires_at: float) -> None:
        """Record that ``user_id`` keeps ``access`` (``"none"`` or ``"read"``) on
        ``document_id`` until ``expires_at`` (Unix time, s), replacing an earlier one; expired
        revocations are forgotten. Committed when it returns (it survives a restart)."""
        ...

    async def load_revocations(self) -> list[tuple[str, str, str, float]]:
        """Every revocation not yet expired: ``(document_id, user_id, access, expires_at)``."""
        ...
