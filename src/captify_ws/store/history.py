"""What the stores keep of a document's history: the change feed and versions.

The change feed is one row per committed change of a document, numbered by a cursor that only
grows in commit order across the whole deployment: a reader that has seen cursor ``n`` and asks
for what follows never misses a change committed later (SQLite has one writer at a time;
PostgreSQL takes a transaction-scoped advisory lock before numbering a feed row, so numbers are
taken in commit order by every instance). Kinds:

``created``   the first updates of a new document were committed (``updates``: how many)
``changed``   more updates of a document were committed in one transaction (``updates``)
``version``   a version was recorded (``version``: its number)
``deleted``   the document was deleted

``who`` lists who made the change: the labels of the principals whose connections' updates went
in (``user:<id>``, ``agent:<name>``, ``anonymous``), ``server`` for the server API.

A version is the whole document at one moment (a Yjs update, garbage-collected like any encoded
state), so it survives compaction of the update log and costs one copy of the document.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

FeedKind = Literal["created", "changed", "version", "deleted"]
VersionKind = Literal["auto", "named", "restore"]

#: the most feed entries or versions one read returns
MAX_PAGE: Final = 1000
#: the highest version number (the stores' INTEGER columns); a larger one names no version
MAX_VERSION: Final = 2**31 - 1
#: the highest feed cursor or delivery id a request may name (within a signed 64-bit INTEGER)
MAX_ID: Final = 2**62


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One committed change of a document, as the change feed lists it."""

    #: position in the feed: strictly increasing in commit order
    cursor: int
    document_id: str
    kind: FeedKind
    #: seconds since the epoch (UTC) when it was committed
    at: float
    #: Yjs updates committed (``created``/``changed``), else 0
    updates: int
    who: tuple[str, ...]
    #: the version number of a ``version`` entry, else ``None``
    version: int | None = None

    def as_json(self) -> dict[str, object]:
        return {"cursor": self.cursor, "documentId": self.document_id, "kind": self.kind,
                "at": self.at, "updates": self.updates, "who": list(self.who),
                "version": self.version}


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version without its content."""

    document_id: str
    #: 1, 2, … per document
    number: int
    kind: VersionKind
    name: str | None
    at: float
    #: who changed the document since the previous version
    who: tuple[str, ...]
    #: the feed cursor of this version's ``version`` entry
    cursor: int
    #: bytes of the stored state
    size: int
    #: the Yjs client ids whose updates went in since the previous version (those seen by
    #: the instance that recorded it), and who each is — for attribution in diffs
    clients: Mapping[int, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"documentId": self.document_id, "version": self.number, "kind": self.kind,
                "name": self.name, "at": self.at, "who": list(self.who),
                "cursor": self.cursor, "size": self.size}


@dataclass(frozen=True, slots=True)
class Version:
    """A version and the document at that version (one Yjs update)."""

    info: VersionInfo
    state: bytes


@runtime_checkable
class HistoryStore(Protocol):
    """The history a store keeps beside its documents (``memory``, ``sqlite``, ``postgres``).

    ``append_updates(entries, who)`` of the same store writes the ``created``/``changed``
    feed rows in the transaction that commits the updates, and ``delete_document`` the
    ``deleted`` row and drops the document's versions.
    """

    async def read_feed(self, since: int, limit: int) -> list[FeedEntry]:
        """Feed entries with a cursor greater than ``since``, in order, at most ``limit``.

        Reflects every change committed before this call started; never skips one.
        """
        ...

    async def last_cursor(self) -> int:
        """The cursor of the newest feed entry, 0 if there is none."""
        ...

    async def first_cursor(self) -> int:
        """The oldest cursor a reader may resume from: the highest cursor ``prune_feed`` ever
        deleted (0 if none). A reader at a lower cursor has missed pruned entries."""
        ...

    async def add_version(self, document_id: str, state: bytes, kind: VersionKind,
                          name: str | None, *, only_if_changed: bool = False,
                          who: Sequence[str] = (),
                          clients: Mapping[int, str] | None = None) -> VersionInfo | None:
        """Record ``state`` as the document's next version, with its ``version`` feed entry,
        in one transaction. ``who`` of the version: the authors of the feed entries since
        the previous version, plus ``who``; ``clients``: Yjs client id → who
        (``VersionInfo.clients``). With ``only_if_changed``, records nothing (and
        returns ``None``) when no update was committed since the previous version."""
        ...

    async def list_versions(self, document_id: str, before: int | None,
                            limit: int) -> list[VersionInfo]:
        """Versions newest first, numbered below ``before`` (all when ``None``)."""
        ...

    async def get_version(self, document_id: str, number: int) -> Version | None:
        """A version with its state, or ``None``."""
        ...

    async def prune_feed(self, before: float, keep_after: int | None) -> int:
        """Delete feed entries committed before ``before`` (epoch seconds), except those
        after cursor ``keep_after`` (what the webhooks have not read yet), and raise
        ``first_cursor`` to the highest deleted, in the same transaction. Returns how many."""
        ...

    async def prune_versions(self, document_id: str, keep: int, older_than: float) -> int:
        """Delete the automatic versions past the newest ``keep`` (0: no count limit) and those
        recorded before ``older_than`` (epoch seconds; 0: no age limit); named and restore
        versions stay. Returns how many were deleted."""
        ...


def who_labels(who: object) -> tuple[str, ...]:
    """``who`` (a set, list or tuple of labels) as its labels, sorted, each once."""
    if not isinstance(who, (set, list, tuple, frozenset)):
        return ()
    return tuple(sorted({str(label) for label in who}))


def encode_who(who: object) -> str:
    """``who`` as stored: a JSON list of labels, sorted, each once."""
    return json.dumps(list(who_labels(who)), separators=(",", ":"))


def decode_who(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    return tuple(str(label) for label in value) if isinstance(value, list) else ()


def updates_per_document(entries: Sequence[tuple[str, bytes]]) -> dict[str, int]:
    """How many updates of a committed batch each document has, in the order the documents
    first appear in the batch."""
    counts: dict[str, int] = {}
    for document_id, _ in entries:
        counts[document_id] = counts.get(document_id, 0) + 1
    return counts


def summarize(entries: Sequence[tuple[str, bytes]],
              who: Mapping[str, Collection[str]] | None) -> list[tuple[str, int, str]]:
    """One feed row per document of a committed batch: ``(document_id, updates, who)`` with
    ``who`` as stored (:func:`encode_who`), in the order the documents first appear."""
    return [(document_id, count, encode_who(set((who or {}).get(document_id, ()))))
            for document_id, count in updates_per_document(entries).items()]


def merge_who(stored: Iterable[str], extra: Iterable[str]) -> str:
    """The ``who`` of a version: the authors of the stored feed rows (JSON lists) and
    ``extra``."""
    labels: set[str] = set(extra)
    for text in stored:
        labels.update(decode_who(text))
    return encode_who(labels)


def doomed_versions(newest_first: Sequence[tuple[int, float]], keep: int,
                    older_than: float) -> list[int]:
    """Which automatic versions ``(number, at)`` retention deletes (``prune_versions``)."""
    return [number for rank, (number, at) in enumerate(newest_first)
            if (keep and rank >= keep) or (older_than and at < older_than)]


def encode_clients(clients: Mapping[int, str] | None) -> str:
    return json.dumps({str(k): v for k, v in (clients or {}).items()}, separators=(",", ":"))


def decode_clients(text: str | None) -> dict[int, str]:
    value = json.loads(text or "{}")
    return {int(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
