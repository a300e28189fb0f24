"""The channel store in the SQLite file of the document store (its own connection and thread,
its own schema version). Writes commit before they return (``synchronous`` as the URL says)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from captify_ws.channelstore.base import Added, MarkedRead, Notification, UnreadCount
from captify_ws.channelstore.schema import SQLITE_MIGRATIONS, VERSION_TABLE
from captify_ws.errors import StoreError
from captify_ws.store.sqlite import parse_sqlite_url

T = TypeVar("T")

_COLUMNS = "id, user_id, kind, payload, created_at, read_at"


def _notification(row: tuple[int, str, str, str, int, int | None]) -> Notification:
    return Notification(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


def migrate(db: sqlite3.Connection) -> None:
    """Bring the channel tables up to date, inside one write transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        row = db.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        version = row[0] if row else 0
        if row is None:
            db.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
        if version > len(SQLITE_MIGRATIONS):
            raise StoreError(f"the channel tables are at schema {version}, newer than this "
                             f"captify-ws ({len(SQLITE_MIGRATIONS)}): upgrade captify-ws")
        for statements in SQLITE_MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"UPDATE {VERSION_TABLE} SET version = ?", (len(SQLITE_MIGRATIONS),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class SqliteChannelStore:
    """See the module docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        self._synchronous = options.get("synchronous", "full").upper()
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise StoreError(f"channel store {self.url} is not open")
        db = self._db
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, db)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
                return result
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(transaction)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        migrate(db)
        return db

    async def open(self) -> None:
        if self._db is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="captify-channels-sqlite")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor,
                                                                        self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"cannot open the channel tables in {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._db is None or self._executor is None:
            return
        db, self._db = self._db, None
        await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def check(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    # -- notifications ---------------------------------------------------------------------

    @staticmethod
    def _bump(db: sqlite3.Connection, user_id: str) -> None:
        db.execute("INSERT INTO captify_notification_counters (user_id, version) VALUES (?, 1) "
                   "ON CONFLICT (user_id) DO UPDATE SET version = version + 1", (user_id,))

    @staticmethod
    def _unread(db: sqlite3.Connection, user_id: str) -> UnreadCount:
        count = db.execute("SELECT count(*) FROM captify_notifications WHERE user_id = ? AND "
                           "read_at IS NULL", (user_id,)).fetchone()[0]
        row = db.execute("SELECT version FROM captify_notification_counters WHERE user_id = ?",
                         (user_id,)).fetchone()
        return UnreadCount(count, row[0] if row else 0)

    async def add_notification(self, user_id: str, kind: str, payload_json: str,
                               dedupe_key: str | None) -> Added:
        now = int(time.time() * 1000)

        def work(db: sqlite3.Connection) -> Added:
            if dedupe_key is not None:
                row = db.execute(f"SELECT {_COLUMNS} FROM captify_notifications WHERE "
                                 "user_id = ? AND dedupe_key = ?", (user_id, dedupe_key)).fetchone()
                if row is not None:
                    return Added(_notification(row), False, self._unread(db, user_id))
            cursor = db.execute("INSERT INTO captify_notifications (user_id, kind, payload, "
                                "created_at, dedupe_key) VALUES (?, ?, ?, ?, ?)",
                                (user_id, kind, payload_json, now, dedupe_key))
            self._bump(db, user_id)
            ident = cursor.lastrowid
            assert ident is not None
            notification = Notification(ident, user_id, kind, json.loads(payload_json), now)
            return Added(notification, True, self._unread(db, user_id))
        return await self._write(work)

    async def mark_read(self, user_id: str, ids: Sequence[int]) -> MarkedRead:
        now = int(time.time() * 1000)
        wanted = sorted(set(ids))

        def work(db: sqlite3.Connection) -> MarkedRead:
            changed: list[int] = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                changed += [row[0] for row in db.execute(
                    f"UPDATE captify_notifications SET read_at = ? WHERE user_id = ? AND "
                    f"read_at IS NULL AND id IN ({marks}) RETURNING id",
                    (now, user_id, *chunk))]
            if changed:
                self._bump(db, user_id)
            return MarkedRead(tuple(sorted(changed)), self._unread(db, user_id))
        return await self._write(work)

    async def mark_all_read(self, user_id: str, up_to: int | None) -> MarkedRead:
        now = int(time.time() * 1000)
        limit = up_to if up_to is not None else (1 << 62)

        def work(db: sqlite3.Connection) -> MarkedRead:
            changed = db.execute("UPDATE captify_notifications SET read_at = ? WHERE "
                                 "user_id = ? AND read_at IS NULL AND id <= ?",
                                 (now, user_id, limit)).rowcount
            if changed:
                self._bump(db, user_id)
            return MarkedRead((), self._unread(db, user_id))
        return await self._write(work)

    async def unread(self, user_id: str) -> UnreadCount:
        return await self._run(lambda db: self._unread(db, user_id))

    async def notifications(self, user_id: str, *, before: int | None = None,
                            limit: int = 20) -> list[Notification]:
        bound = before if before is not None else (1 << 62)

        def work(db: sqlite3.Connection) -> list[Notification]:
            rows = db.execute(f"SELECT {_COLUMNS} FROM captify_notifications WHERE "
                              "user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                              (user_id, bound, limit)).fetchall()
            return [_notification(row) for row in rows]
        return await self._run(work)

    # -- durable channel state -------------------------------------------------------------

    async def load_state(self, channel: str) -> dict[str, str] | None:
        row = await self._run(lambda db: db.execute(
            "SELECT state FROM captify_channel_states WHERE channel = ?", (channel,)).fetchone())
        if row is None:
            return None
        state: dict[str, str] = json.loads(row[0])
        return state

    async def save_state(self, channel: str, epoch: str, offset: int,
                         state: dict[str, str]) -> None:
        text = json.dumps(state, separators=(",", ":"))
        now = time.time()
        await self._write(lambda db: db.execute(
            "INSERT INTO captify_channel_states (channel, state, epoch, position, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET state = excluded.state, "
            "epoch = excluded.epoch, position = excluded.position, "
            "updated_at = excluded.updated_at WHERE captify_channel_states.epoch <> "
            "excluded.epoch OR captify_channel_states.position < excluded.position",
            (channel, text, epoch, offset, now)))
