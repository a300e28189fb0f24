"""The PostgreSQL store: one database shared by every instance of a deployment (asyncpg, pooled).

Tables are prefixed ``captify_`` so the store can live in the product's own database. The schema
is migrated under an advisory lock, so instances starting together do not race. Compaction
deletes exactly the log rows it merged (never "everything up to a sequence number": another
instance may commit a lower sequence number later), so concurrent appends are never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from captify_ws.errors import StoreError
from captify_ws.store import postgres_history as history
from captify_ws.store.base import (
    APPENDED,
    CONFLICT,
    DUPLICATE,
    StepLog,
    StepRecord,
    StoredDocument,
    merge_into_snapshot,
)
from captify_ws.store.history import (
    MAX_PAGE,
    FeedEntry,
    Version,
    VersionInfo,
    VersionKind,
    summarize,
)
from captify_ws.store.postgres_agents import PostgresAgentSessions
from captify_ws.store.postgres_webhooks import PostgresWebhooks
from captify_ws.store.schema import POSTGRES_MIGRATIONS


class _Duplicate(Exception):
    """Rolls back an append whose change id was applied before."""


#: Any constant: the advisory lock that serialises migrations across instances.
_MIGRATION_LOCK = 0x43415054


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(PostgresWebhooks, PostgresAgentSessions):
    """Documents in PostgreSQL. See the module docstring."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 connect_timeout: float = 5.0) -> None:
        self._dsn = url
        self.url = mask_url(url)
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._known: set[str] = set()

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"store {self.url} is not open")
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size,
                timeout=self._connect_timeout, command_timeout=30)
            async with self._pool.acquire() as conn:
                await migrate_postgres(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StoreError(f"cannot connect to the store {self.url}: "
                             f"{exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def _call(self, work: Any) -> Any:
        try:
            return await work()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(f"{self.url}: {exc or type(exc).__name__}") from exc

    async def check(self) -> None:
        pool = self._pool_or_fail()

        async def work() -> None:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        await self._call(work)

    async def load(self, document_id: str) -> StoredDocument | None:
        pool = self._pool_or_fail()

        async def work() -> StoredDocument | None:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    "SELECT snapshot FROM captify_documents WHERE id = $1", document_id)
                if row is None:
                    return None
                rows = await conn.fetch("SELECT data FROM captify_updates WHERE document_id = $1 "
                                        "ORDER BY seq", document_id)
                return StoredDocument(row["snapshot"], [r["data"] for r in rows])
        result: StoredDocument | None = await self._call(work)
        return result

    async def append_updates(self, entries: Sequence[tuple[str, bytes]],
                             who: Mapping[str, Collection[str]] | None = None) -> None:
        """Also writes the batch's ``created``/``changed`` feed rows (``store/history.py``)."""
        if not entries:
            return
        pool = self._pool_or_fail()
        # Document rows are created once (see SqliteStore.append_updates).
        documents = sorted({document_id for document_id, _ in entries} - self._known)
        feed = summarize(entries, who)

        async def work() -> None:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                created: set[str] = set()
                if documents:
                    created = {r["id"] for r in await conn.fetch(
                        "INSERT INTO captify_documents (id) SELECT unnest($1::text[]) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id", documents)}
                await conn.execute(
                    "INSERT INTO captify_updates (document_id, data) "
                    "SELECT * FROM unnest($1::text[], $2::bytea[])",
                    [e[0] for e in entries], [e[1] for e in entries])
                await history.write_feed(conn, feed, created, time.time())
        await self._call(work)
        self._known.update(documents)

    async def compact(self, document_id: str) -> int:
        pool = self._pool_or_fail()

        async def work() -> int:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                row = await conn.fetchrow("SELECT snapshot FROM captify_documents "
                                          "WHERE id = $1 FOR UPDATE", document_id)
                if row is None:
                    return 0
                rows = await conn.fetch("SELECT seq, data FROM captify_updates "
                                        "WHERE document_id = $1 ORDER BY seq", document_id)
                if not rows:
                    return 0
                snapshot = merge_into_snapshot(row["snapshot"], [r["data"] for r in rows])
                await conn.execute("UPDATE captify_documents SET snapshot = $2, "
                                   "updated_at = now() WHERE id = $1", document_id, snapshot)
                await conn.execute("DELETE FROM captify_updates WHERE seq = ANY($1::bigint[])",
                                   [r["seq"] for r in rows])
                return len(rows)
        merged: int = await self._call(work)
        return merged

    async def list_documents(self) -> list[str]:
        pool = self._pool_or_fail()

        async def work() -> list[str]:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                return [r["id"] for r in await conn.fetch(
                    "SELECT id FROM captify_documents ORDER BY id")]
        result: list[str] = await self._call(work)
        return result

    def forget(self, document_id: str) -> None:
        self._known.discard(document_id)

    async def save_revocation(self, document_id: str, user_id: str, access: str,
                              expires_at: float) -> None:
        pool = self._pool_or_fail()

        async def work() -> None:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                await conn.execute("DELETE FROM captify_revocations WHERE expires_at <= $1",
                                   time.time())
                await conn.execute(
                    "INSERT INTO captify_revocations VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (document_id, user_id) DO UPDATE SET access = $3, "
                    "expires_at = $4", document_id, user_id, access, expires_at)
        await self._call(work)

    async def load_revocations(self) -> list[tuple[str, str, str, float]]:
        pool = self._pool_or_fail()

        async def work() -> list[tuple[str, str, str, float]]:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                return [(r["document_id"], r["user_id"], r["access"], float(r["expires_at"]))
                        for r in await conn.fetch(
                            "SELECT document_id, user_id, access, expires_at "
                            "FROM captify_revocations WHERE expires_at > $1", time.time())]
        result: list[tuple[str, str, str, float]] = await self._call(work)
        return result

    async def delete_document(self, document_id: str) -> bool:
        pool = self._pool_or_fail()
        self._known.discard(document_id)

        async def work() -> bool:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                await conn.execute("DELETE FROM captify_updates WHERE document_id = $1",
                                   document_id)
                status = await conn.execute("DELETE FROM captify_documents WHERE id = $1",
                                            document_id)
                steps = await conn.execute("DELETE FROM captify_steps WHERE document_id = $1",
                                           document_id)
                for table in ("captify_pm_snapshots", "captify_changes"):
                    await conn.execute(f"DELETE FROM {table} WHERE document_id = $1",
                                       document_id)
                existed = bool(status != "DELETE 0" or steps != "DELETE 0")
                if existed:
                    await history.write_deleted(conn, document_id)
                return existed
        result: bool = await self._call(work)
        return result

    # -- history (store/history.py) -------------------------------------------------------

    async def _in_transaction(self, work: Callable[[Any], Awaitable[Any]], *,
                              write: bool = False) -> Any:
        pool = self._pool_or_fail()

        async def run() -> Any:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(readonly=not write):
                return await work(conn)
        return await self._call(run)

    async def read_feed(self, since: int, limit: int) -> list[FeedEntry]:
        result: list[FeedEntry] = await self._in_transaction(
            lambda conn: history.read_feed(conn, since, min(limit, MAX_PAGE)))
        return result

    async def last_cursor(self) -> int:
        result: int = await self._in_transaction(history.last_cursor)
        return result

    async def first_cursor(self) -> int:
        result: int = await self._in_transaction(history.first_cursor)
        return result

    async def prune_feed(self, before: float, keep_after: int | None) -> int:
        result: int = await self._in_transaction(
            lambda conn: history.prune_feed(conn, before, keep_after), write=True)
        return result

    async def add_version(self, document_id: str, state: bytes, kind: VersionKind,
                          name: str | None, *, only_if_changed: bool = False,
                          who: Sequence[str] = (),
                          clients: Mapping[int, str] | None = None) -> VersionInfo | None:
        result: VersionInfo | None = await self._in_transaction(
            lambda conn: history.add_version(conn, document_id, state, kind, name,
                                             only_if_changed, who, clients), write=True)
        return result

    async def list_versions(self, document_id: str, before: int | None,
                            limit: int) -> list[VersionInfo]:
        result: list[VersionInfo] = await self._in_transaction(
            lambda conn: history.list_versions(conn, document_id, before,
                                               min(limit, MAX_PAGE)))
        return result

    async def get_version(self, document_id: str, number: int) -> Version | None:
        result: Version | None = await self._in_transaction(
            lambda conn: history.get_version(conn, document_id, number))
        return result

    async def prune_versions(self, document_id: str, keep: int, older_than: float) -> int:
        result: int = await self._in_transaction(
            lambda conn: history.prune_versions(conn, document_id, keep, older_than),
            write=True)
        return result

    async def load_steps(self, document_id: str, since: int = 0) -> StepLog:
        pool = self._pool_or_fail()

        async def work() -> StepLog:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow("SELECT version, doc FROM captify_pm_snapshots "
                                          "WHERE document_id = $1", document_id)
                rows = await conn.fetch("SELECT version, step, client_id FROM captify_steps "
                                        "WHERE document_id = $1 AND version >= $2 "
                                        "ORDER BY version", document_id, since)
                return StepLog((int(row["version"]), row["doc"]) if row else None,
                               [StepRecord(int(r["version"]), r["step"], r["client_id"])
                                for r in rows])
        result: StepLog = await self._call(work)
        return result

    async def append_steps(self, document_id: str, version: int, steps: Sequence[str],
                           client_id: str, change_id: str | None = None) -> str:
        pool = self._pool_or_fail()

        async def work() -> str:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                try:
                    async with conn.transaction():
                        if change_id is not None:
                            inserted = await conn.fetchval(
                                "INSERT INTO captify_changes (document_id, change_id, version) "
                                "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                                document_id, change_id, version)
                            if inserted is None:
                                raise _Duplicate
                        await conn.execute(
                            "INSERT INTO captify_steps (document_id, version, step, client_id) "
                            "SELECT $1, v, s, $4 FROM unnest($2::bigint[], $3::text[]) "
                            "AS t(v, s)", document_id,
                            [version + i for i in range(len(steps))], list(steps), client_id)
                except _Duplicate:
                    return DUPLICATE
                except asyncpg.UniqueViolationError:
                    return CONFLICT
                return APPENDED
        result: str = await self._call(work)
        return result

    async def find_change(self, document_id: str, change_id: str) -> int | None:
        pool = self._pool_or_fail()

        async def work() -> int | None:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                value = await conn.fetchval("SELECT version FROM captify_changes WHERE "
                                            "document_id = $1 AND change_id = $2",
                                            document_id, change_id)
                return None if value is None else int(value)
        result: int | None = await self._call(work)
        return result

    async def save_step_snapshot(self, document_id: str, version: int, doc: str,
                                 keep_steps: int) -> None:
        pool = self._pool_or_fail()

        async def work() -> None:
            async with pool.acquire(timeout=self._connect_timeout) as conn, \
                    conn.transaction():
                await conn.execute(
                    "INSERT INTO captify_pm_snapshots (document_id, version, doc) "
                    "VALUES ($1, $2, $3) ON CONFLICT (document_id) DO UPDATE SET "
                    "version = excluded.version, doc = excluded.doc "
                    "WHERE excluded.version > captify_pm_snapshots.version",
                    document_id, version, doc)
                await conn.execute("DELETE FROM captify_steps WHERE document_id = $1 "
                                   "AND version < $2", document_id, version - keep_steps)
        await self._call(work)


async def migrate_postgres(conn: Any, target: int | None = None) -> int:
    """Bring the schema to ``target`` (default: newest) under an advisory lock."""
    goal = len(POSTGRES_MIGRATIONS) if target is None else target
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS captify_meta "
                           "(key TEXT PRIMARY KEY, value TEXT)")
        value = await conn.fetchval("SELECT value FROM captify_meta "
                                    "WHERE key = 'schema_version'")
        version = int(value) if value is not None else 0
        if version > len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the store's schema version {version} is newer than this "
                             f"captify-ws knows ({len(POSTGRES_MIGRATIONS)}); upgrade captify-ws")
        while version < goal:
            for statement in POSTGRES_MIGRATIONS[version]:
                await conn.execute(statement)
            version += 1
        await conn.execute("INSERT INTO captify_meta (key, value) VALUES ('schema_version', $1) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", str(version))
    return version
