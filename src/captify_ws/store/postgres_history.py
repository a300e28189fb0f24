"""The PostgreSQL store's history (``store/history.py``): the change feed and versions.

Functions on a connection inside the caller's transaction. A BIGSERIAL alone does not number
rows in commit order (one instance may take 11 and commit before another commits 10: a reader
at 11 would never see 10), so every transaction that writes a feed row first takes
:data:`FEED_LOCK`, a transaction-scoped advisory lock: numbers are then taken, and committed,
one transaction after the other. The lock is taken last in a transaction, just before the feed
rows, so it is held for the shortest time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

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

#: Any constant: the advisory lock that orders feed cursors across instances.
FEED_LOCK = 0x43465744

_VERSION_COLUMNS = ("document_id, number, kind, name, at, who, seq, length(state) AS size, "
                    "clients")


async def write_feed(conn: Any, rows: Sequence[tuple[str, int, str]], created: set[str],
                     now: float) -> None:
    """Feed rows for a batch of committed updates: ``(document_id, updates, who)``."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    await conn.execute(
        "INSERT INTO captify_feed (document_id, kind, at, updates, who) "
        "SELECT d, k, $3, u, w FROM unnest($1::text[], $2::text[], $4::int[], $5::text[]) "
        "WITH ORDINALITY AS t(d, k, u, w, n) ORDER BY n",
        [row[0] for row in rows],
        ["created" if row[0] in created else "changed" for row in rows], now,
        [row[1] for row in rows], [row[2] for row in rows])


async def write_deleted(conn: Any, document_id: str) -> None:
    """The ``deleted`` feed row of a document, and its versions gone."""
    await conn.execute("DELETE FROM captify_versions WHERE document_id = $1", document_id)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    await conn.execute("INSERT INTO captify_feed (document_id, kind, at, updates, who) "
                       "VALUES ($1, 'deleted', $2, 0, '[]')", document_id, time.time())


async def read_feed(conn: Any, since: int, limit: int) -> list[FeedEntry]:
    return [FeedEntry(int(r["seq"]), r["document_id"], r["kind"], float(r["at"]),
                      int(r["updates"]), decode_who(r["who"]), r["version"])
            for r in await conn.fetch(
                "SELECT seq, document_id, kind, at, updates, who, version FROM captify_feed "
                "WHERE seq > $1 ORDER BY seq LIMIT $2", since, limit)]


async def prune_feed(conn: Any, before: float, keep_after: int | None) -> int:
    """See ``HistoryStore.prune_feed``; call inside a transaction."""
    row = await conn.fetchrow(
        "WITH gone AS (DELETE FROM captify_feed WHERE at < $1 AND "
        "($2::bigint IS NULL OR seq <= $2) RETURNING seq) "
        "SELECT count(*) AS n, max(seq) AS highest FROM gone", before, keep_after)
    if row["highest"] is not None:
        await conn.execute(
            "INSERT INTO captify_meta (key, value) VALUES ('feed_first_cursor', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = greatest(captify_meta.value::bigint, "
            "excluded.value::bigint)::text", str(row["highest"]))
    return int(row["n"])


async def first_cursor(conn: Any) -> int:
    value = await conn.fetchval("SELECT value FROM captify_meta "
                                "WHERE key = 'feed_first_cursor'")
    return int(value) if value is not None else 0


async def last_cursor(conn: Any) -> int:
    value = await conn.fetchval("SELECT max(seq) FROM captify_feed")
    return int(value) if value is not None else 0


def _info(row: Any) -> VersionInfo:
    return VersionInfo(row["document_id"], int(row["number"]), row["kind"], row["name"],
                       float(row["at"]), decode_who(row["who"]), int(row["seq"]),
                       int(row["size"]), decode_clients(row["clients"]))


async def add_version(conn: Any, document_id: str, state: bytes, kind: VersionKind,
                      name: str | None, only_if_changed: bool, who: Sequence[str],
                      clients: Mapping[int, str] | None = None) -> VersionInfo | None:
    """See ``HistoryStore.add_version``; call inside a transaction. The feed lock, taken
    first, also orders version numbers across instances."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
    previous = await conn.fetchrow("SELECT number, seq FROM captify_versions "
                                   "WHERE document_id = $1 ORDER BY number DESC LIMIT 1",
                                   document_id)
    number, since = (int(previous["number"]), int(previous["seq"])) if previous else (0, 0)
    authors = [r["who"] for r in await conn.fetch(
        "SELECT who FROM captify_feed WHERE document_id = $1 AND seq > $2 "
        "AND kind IN ('created', 'changed')", document_id, since)]
    if only_if_changed and not authors:
        return None
    now = time.time()
    merged = merge_who(authors, who)
    seq = await conn.fetchval(
        "INSERT INTO captify_feed (document_id, kind, at, updates, who, version) "
        "VALUES ($1, 'version', $2, 0, $3, $4) RETURNING seq",
        document_id, now, encode_who(list(who)), number + 1)
    await conn.execute("INSERT INTO captify_versions (document_id, number, kind, name, at, "
                       "who, seq, state, clients) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                       document_id, number + 1, kind, name, now, merged, seq, state,
                       encode_clients(clients))
    return VersionInfo(document_id, number + 1, kind, name, now, decode_who(merged), int(seq),
                       len(state), dict(clients or {}))


async def list_versions(conn: Any, document_id: str, before: int | None,
                        limit: int) -> list[VersionInfo]:
    return [_info(row) for row in await conn.fetch(
        f"SELECT {_VERSION_COLUMNS} FROM captify_versions WHERE document_id = $1 "
        "AND number < $2 ORDER BY number DESC LIMIT $3",
        document_id, before if before is not None else 2**31 - 1, limit)]


async def get_version(conn: Any, document_id: str, number: int) -> Version | None:
    row = await conn.fetchrow(f"SELECT {_VERSION_COLUMNS}, state FROM captify_versions "
                              "WHERE document_id = $1 AND number = $2", document_id, number)
    return None if row is None else Version(_info(row), bytes(row["state"]))


async def prune_versions(conn: Any, document_id: str, keep: int, older_than: float) -> int:
    """See ``HistoryStore.prune_versions``; call inside a transaction."""
    rows = await conn.fetch("SELECT number, at FROM captify_versions WHERE document_id = $1 "
                            "AND kind = 'auto' ORDER BY number DESC FOR UPDATE", document_id)
    doomed = doomed_versions([(int(r["number"]), float(r["at"])) for r in rows], keep,
                             older_than)
    await conn.execute("DELETE FROM captify_versions WHERE document_id = $1 "
                       "AND number = ANY($2::int[])", document_id, doomed)
    return len(doomed)
