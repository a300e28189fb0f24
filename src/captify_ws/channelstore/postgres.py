"""The channel store in the PostgreSQL database of the document store (its own pool, its own
schema version, migrated under an advisory lock). A user's counter row is locked first in every
write, so concurrent writers for one user (on any instance) are serialised and each sees the
count the previous one committed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from captify_ws.channelstore.base import Added, MarkedRead, Notification, UnreadCount
from captify_ws.channelstore.schema import POSTGRES_MIGRATIONS, VERSION_TABLE
from captify_ws.errors import StoreError
from captify_ws.store.postgres import mask_url

T = TypeVar("T")

#: The advisory lock serialising the channel tables' migrations across instances.
_MIGRATION_LOCK = 0x43574348
_COLUMNS = "id, user_id, kind, payload::text AS payload, created_at, read_at"


def _notification(row: Any) -> Notification:
    return Notification(row["id"], row["user_id"], row["kind"], json.loads(row["payload"]),
                        row["created_at"], row["read_at"])


async def migrate(conn: Any) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                           "(version INTEGER NOT NULL)")
        version = await conn.fetchval(f"SELECT version FROM {VERSION_TABLE}")
        if version is None:
            await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
            version = 0
        if version > len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the channel tables are at schema {version}, newer than this "
                             f"captify-ws ({len(POSTGRES_MIGRATIONS)}): upgrade captify-ws")
        for statements in POSTGRES_MIGRATIONS[version:]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute(f"UPDATE {VERSION_TABLE} SET version = $1", len(POSTGRES_MIGRATIONS))


class PostgresChannelStore:
    """See the module docstring."""

    def __init__(self, url: str, *, max_size: int = 5, timeout_s: float = 5.0) -> None:
        self._dsn = url
        self.url = mask_url(url)
        self._max_size = max_size
        self._timeout = timeout_s
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1,
                                                   max_size=self._max_size,
                                                   timeout=self._timeout, command_timeout=30)
            async with self._pool.acquire() as conn:
                await migrate(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StoreError(f"cannot open the channel tables in {self.url}: "
                             f"{exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def _call(self, work: Callable[[Any], Awaitable[T]], *,
                    transaction: bool = False) -> T:
        if self._pool is None:
            raise StoreError(f"channel store {self.url} is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(f"{self.url}: {exc or type(exc).__name__}") from exc

    async def check(self) -> None:
        await self._call(lambda conn: conn.fetchval("SELECT 1"))

    # -- notifications ---------------------------------------------------------------------

    @staticmethod
    async def _lock_user(conn: Any, user_id: str) -> None:
        """Take the user's counter row lock (creating the row), version unchanged."""
        await conn.execute("INSERT INTO captify_notification_counters (user_id, version) "
                           "VALUES ($1, 0) ON CONFLICT (user_id) DO UPDATE SET "
                           "version = captify_notification_counters.version", user_id)

    @staticmethod
    async def _bump(conn: Any, user_id: str) -> None:
        await conn.execute("UPDATE captify_notification_counters SET version = version + 1 "
                           "WHERE user_id = $1", user_id)

    @staticmethod
    async def _unread(conn: Any, user_id: str) -> UnreadCount:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM captify_notifications WHERE user_id = $1 AND "
            "read_at IS NULL) AS count, (SELECT version FROM captify_notification_counters "
            "WHERE user_id = $1) AS version", user_id)
        return UnreadCount(int(row["count"]), int(row["version"] or 0))

    async def add_notification(self, user_id: str, kind: str, payload_json: str,
                               dedupe_key: str | None) -> Added:
        now = int(time.time() * 1000)

        async def work(conn: Any) -> Added:
            await self._lock_user(conn, user_id)
            row = await conn.fetchrow(
                f"INSERT INTO captify_notifications (user_id, kind, payload, created_at, "
                f"dedupe_key) VALUES ($1, $2, $3::jsonb, $4, $5) ON CONFLICT (user_id, "
                f"dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING RETURNING {_COLUMNS}",
                user_id, kind, payload_json, now, dedupe_key)
            if row is None:
                earlier = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM captify_notifications WHERE user_id = $1 AND "
                    "dedupe_key = $2", user_id, dedupe_key)
                return Added(_notification(earlier), False, await self._unread(conn, user_id))
            await self._bump(conn, user_id)
            return Added(_notification(row), True, await self._unread(conn, user_id))
        return await self._call(work, transaction=True)

    async def mark_read(self, user_id: str, ids: Sequence[int]) -> MarkedRead:
        now = int(time.time() * 1000)

        async def work(conn: Any) -> MarkedRead:
            await self._lock_user(conn, user_id)
            rows = await conn.fetch(
                "UPDATE captify_notifications SET read_at = $1 WHERE user_id = $2 AND "
                "read_at IS NULL AND id = ANY($3::bigint[]) RETURNING id",
                now, user_id, list(ids))
            if rows:
                await self._bump(conn, user_id)
            return MarkedRead(tuple(sorted(row["id"] for row in rows)),
                              await self._unread(conn, user_id))
        return await self._call(work, transaction=True)

    async def mark_all_read(self, user_id: str, up_to: int | None) -> MarkedRead:
        now = int(time.time() * 1000)

        async def work(conn: Any) -> MarkedRead:
            await self._lock_user(conn, user_id)
            status = await conn.execute(
                "UPDATE captify_notifications SET read_at = $1 WHERE user_id = $2 AND "
                "read_at IS NULL AND id <= $3", now, user_id,
                up_to if up_to is not None else (1 << 62))
            if not status.endswith(" 0"):
                await self._bump(conn, user_id)
            return MarkedRead((), await self._unread(conn, user_id))
        return await self._call(work, transaction=True)

    async def unread(self, user_id: str) -> UnreadCount:
        return await self._call(lambda conn: self._unread(conn, user_id))

    async def notifications(self, user_id: str, *, before: int | None = None,
                            limit: int = 20) -> list[Notification]:
        async def work(conn: Any) -> list[Notification]:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM captify_notifications WHERE user_id = $1 AND "
                "id < $2 ORDER BY id DESC LIMIT $3", user_id,
                before if before is not None else (1 << 62), limit)
            return [_notification(row) for row in rows]
        return await self._call(work)

    # -- durable channel state -------------------------------------------------------------

    async def load_state(self, channel: str) -> dict[str, str] | None:
        text = await self._call(lambda conn: conn.fetchval(
            "SELECT state FROM captify_channel_states WHERE channel = $1", channel))
        if text is None:
            return None
        state: dict[str, str] = json.loads(text)
        return state

    async def save_state(self, channel: str, epoch: str, offset: int,
                         state: dict[str, str]) -> None:
        text = json.dumps(state, separators=(",", ":"))
        await self._call(lambda conn: conn.execute(
            "INSERT INTO captify_channel_states (channel, state, epoch, position) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (channel) DO UPDATE SET state = excluded.state, "
            "epoch = excluded.epoch, position = excluded.position, updated_at = now() "
            "WHERE captify_channel_states.epoch <> excluded.epoch OR "
            "captify_channel_states.position < excluded.position",
            channel, text, epoch, offset))
