"""The SQLite store's history (``store/history.py``): the change feed and versions.

Functions on an open connection, called on the store's one database thread; the callers own
the transactions. SQLite lets one transaction write at a time, so feed cursors (an
AUTOINCREMENT key) are taken in commit order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence

from captify_ws.store.history import (
    FeedEntry,
    Version,
    VersionInfo,
    VersionKind,
    decode_clients,
    decode_who,
    doomed_versions,
    encode_clients,
    encode_who,
    merge_who,
)

_VERSION_COLUMNS = "document_id, number, kind, name, at, who, seq, length(state), clients"


def write_feed(db: sqlite3.Connection, rows: Sequence[tuple[str, int, str]],
               created: set[str], now: float) -> None:
    """Feed rows for a batch of committed updates: ``(document_id, updates, who)``."""
    db.executemany("INSERT INTO captify_feed (document_id, kind, at, updates, who) "
                   "VALUES (?, ?, ?, ?, ?)",
                   [(document_id, "created" if document_id in created else "changed", now,
                     count, who) for document_id, count, who in rows])


def write_deleted(db: sqlite3.Connection, document_id: str) -> None:
    """The ``deleted`` feed row of a document, and its versions gone."""
    db.execute("DELETE FROM captify_versions WHERE document_id = ?", (document_id,))
    db.execute("INSERT INTO captify_feed (document_id, kind, at, updates, who) "
               "VALUES (?, 'deleted', ?, 0, '[]')", (document_id, time.time()))


def read_feed(db: sqlite3.Connection, since: int, limit: int) -> list[FeedEntry]:
    return [FeedEntry(int(seq), document_id, kind, float(at), int(updates), decode_who(who),
                      None if version is None else int(version))
            for seq, document_id, kind, at, updates, who, version in db.execute(
                "SELECT seq, document_id, kind, at, updates, who, version FROM captify_feed "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit))]


def prune_feed(db: sqlite3.Connection, before: float, keep_after: int | None) -> int:
    """See ``HistoryStore.prune_feed``; call inside a write transaction."""
    doomed = "at < ? AND (? IS NULL OR seq <= ?)"
    (highest,) = db.execute(f"SELECT max(seq) FROM captify_feed WHERE {doomed}",
                            (before, keep_after, keep_after)).fetchone()
    if highest is None:
        return 0
    db.execute("INSERT INTO captify_meta (key, value) VALUES ('feed_first_cursor', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = CAST(max(CAST(value AS INTEGER), "
               "CAST(excluded.value AS INTEGER)) AS TEXT)", (str(highest),))
    return int(db.execute(f"DELETE FROM captify_feed WHERE {doomed}",
                          (before, keep_after, keep_after)).rowcount)


def first_cursor(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM captify_meta WHERE key = 'feed_first_cursor'").fetchone()
    return int(row[0]) if row else 0


def last_cursor(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT max(seq) FROM captify_feed").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _info(row: tuple[object, ...]) -> VersionInfo:
    document_id, number, kind, name, at, who, seq, size, clients = row
    return VersionInfo(str(document_id), int(str(number)), kind,  # type: ignore[arg-type]
                       None if name is None else str(name), float(str(at)),
                       decode_who(str(who)), int(str(seq)), int(str(size)),
                       decode_clients(str(clients)))


def add_version(db: sqlite3.Connection, document_id: str, state: bytes, kind: VersionKind,
                name: str | None, only_if_changed: bool, who: Sequence[str],
                clients: Mapping[int, str] | None = None) -> VersionInfo | None:
    """See ``HistoryStore.add_version``; call inside a write transaction."""
    previous = db.execute("SELECT number, seq FROM captify_versions WHERE document_id = ? "
                          "ORDER BY number DESC LIMIT 1", (document_id,)).fetchone()
    number, since = (int(previous[0]), int(previous[1])) if previous else (0, 0)
    authors = [text for (text,) in db.execute(
        "SELECT who FROM captify_feed WHERE document_id = ? AND seq > ? "
        "AND kind IN ('created', 'changed')", (document_id, since))]
    if only_if_changed and not authors:
        return None
    now = time.time()
    seq = db.execute("INSERT INTO captify_feed (document_id, kind, at, updates, who, version) "
                     "VALUES (?, 'version', ?, 0, ?, ?)",
                     (document_id, now, encode_who(list(who)), number + 1)).lastrowid
    db.execute("INSERT INTO captify_versions (document_id, number, kind, name, at, who, seq, "
               "state, clients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (document_id, number + 1, kind, name, now, merge_who(authors, who), seq, state,
                encode_clients(clients)))
    return VersionInfo(document_id, number + 1, kind, name, now,
                       decode_who(merge_who(authors, who)), int(seq or 0), len(state),
                       dict(clients or {}))


def list_versions(db: sqlite3.Connection, document_id: str, before: int | None,
                  limit: int) -> list[VersionInfo]:
    return [_info(row) for row in db.execute(
        f"SELECT {_VERSION_COLUMNS} FROM captify_versions WHERE document_id = ? "
        "AND number < ? ORDER BY number DESC LIMIT ?",
        (document_id, before if before is not None else 2**62, limit))]


def get_version(db: sqlite3.Connection, document_id: str, number: int) -> Version | None:
    row = db.execute(f"SELECT {_VERSION_COLUMNS}, state FROM captify_versions "
                     "WHERE document_id = ? AND number = ?", (document_id, number)).fetchone()
    return None if row is None else Version(_info(row[:9]), bytes(row[9]))


def prune_versions(db: sqlite3.Connection, document_id: str, keep: int,
                   older_than: float) -> int:
    """See ``HistoryStore.prune_versions``; call inside a write transaction."""
    rows = db.execute("SELECT number, at FROM captify_versions WHERE document_id = ? "
                      "AND kind = 'auto' ORDER BY number DESC", (document_id,)).fetchall()
    doomed = doomed_versions([(int(number), float(at)) for number, at in rows], keep,
                             older_than)
    db.executemany("DELETE FROM captify_versions WHERE document_id = ? AND number = ?",
                   [(document_id, number) for number in doomed])
    return len(doomed)
