"""The SQLite store: the embedded default, one file, WAL journal.

All database work runs on one dedicated thread (SQLite allows one writer at a time anyway), so
the event loop never waits for the disk. ``synchronous=FULL`` by default: a committed batch
survives ``kill -9`` and power loss; ``?synchronous=normal`` in the URL trades the last
transactions before a power loss (never before a process crash) for fewer fsyncs.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from captify_ws.errors import ConfigError, StoreError
from captify_ws.store import sqlite_history as history
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
from captify_ws.store.schema import SQLITE_MIGRATIONS
from captify_ws.store.sqlite_agents import SqliteAgentSessions
from captify_ws.store.sqlite_webhooks import SqliteWebhooks

T = TypeVar("T")


def parse_sqlite_url(url: str) -> tuple[Path, dict[str, str]]:
    """``sqlite:///data/x.db?synchronous=normal`` → (Path("data/x.db"), {"synchronous": …})."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path.startswith("/") or parts.netloc:
        raise ConfigError(f"store {url!r}: expected sqlite:///relative.db or "
                          "sqlite:////absolute/path.db")
    path = parts.path[1:]
    if not path:
        raise ConfigError(f"store {url!r}: no file name")
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return Path(path), options


class SqliteStore(SqliteWebhooks, SqliteAgentSessions):
    """Documents in one SQLite file. See the module docstring for durability."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        synchronous = options.get("synchronous", "full").upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(f"store {url!r}: synchronous must be full, normal or extra")
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        #: document id → its integer key (the log refers to documents by it)
        self._numbers: dict[str, int] = {}

    # -- plumbing --------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise StoreError(f"store {self.url} is not open")
        db = self._db

        def call() -> T:
            with self._lock:
                return work(db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        migrate_sqlite(db)
        return db

    async def open(self) -> None:
        if self._db is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captify-sqlite")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor,
                                                                        self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"cannot open the store {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._db is None or self._executor is None:
            return
        db = self._db
        await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)
        self._db = None
        self._executor = None

    async def check(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    # -- documents -------------------------------------------------------------------------

    async def load(self, document_id: str) -> StoredDocument | None:
        def work(db: sqlite3.Connection) -> StoredDocument | None:
            row = db.execute("SELECT num, snapshot FROM captify_documents WHERE id = ?",
                             (document_id,)).fetchone()
            if row is None:
                return None
            updates = [bytes(data) for (data,) in db.execute(
                "SELECT data FROM captify_updates WHERE doc = ? ORDER BY seq", (row[0],))]
            return StoredDocument(bytes(row[1]) if row[1] is not None else None, updates)
        return await self._run(work)

    async def append_updates(self, entries: Sequence[tuple[str, bytes]],
                             who: Mapping[str, Collection[str]] | None = None) -> None:
        """Also writes the batch's ``created``/``changed`` feed rows (``store/history.py``)."""
        if not entries:
            return
        now = time.time()
        numbers = self._numbers
        # Document rows are created once; a busy batch touches many documents, and updating
        # each row on every commit cost more than the inserts themselves.
        new = {document_id for document_id, _ in entries if document_id not in numbers}
        feed = summarize(entries, who)

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                created = set()
                for document_id in new:
                    if db.execute("INSERT INTO captify_documents (id, created_at, updated_at) "
                                  "VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                                  (document_id, now, now)).rowcount:
                        created.add(document_id)
                    numbers[document_id] = db.execute(
                        "SELECT num FROM captify_documents WHERE id = ?",
                        (document_id,)).fetchone()[0]
                db.executemany("INSERT INTO captify_updates (doc, data) VALUES (?, ?)",
                               [(numbers[document_id], update)
                                for document_id, update in entries])
                history.write_feed(db, feed, created, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for document_id in new:
                    numbers.pop(document_id, None)
                raise
        await self._run(work)

    async def compact(self, document_id: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT num, snapshot FROM captify_documents WHERE id = ?",
                                 (document_id,)).fetchone()
                rows = db.execute("SELECT seq, data FROM captify_updates WHERE doc = ? "
                                  "ORDER BY seq", (row[0],)).fetchall() if row else []
                if row is None or not rows:
                    db.execute("ROLLBACK")
                    return 0
                snapshot = merge_into_snapshot(row[1], [bytes(data) for _, data in rows])
                db.execute("UPDATE captify_documents SET snapshot = ?, updated_at = ? WHERE id = ?",
                           (snapshot, time.time(), document_id))
                db.executemany("DELETE FROM captify_updates WHERE seq = ?",
                               [(seq,) for seq, _ in rows])
                db.execute("COMMIT")
                return len(rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(work)

    async def list_documents(self) -> list[str]:
        return await self._run(lambda db: [row[0] for row in db.execute(
            "SELECT id FROM captify_documents ORDER BY id")])

    def forget(self, document_id: str) -> None:
        self._numbers.pop(document_id, None)

    async def save_revocation(self, document_id: str, user_id: str, access: str,
                              expires_at: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM captify_revocations WHERE expires_at <= ?", (time.time(),))
            db.execute("INSERT OR REPLACE INTO captify_revocations VALUES (?, ?, ?, ?)",
                       (document_id, user_id, access, expires_at))
        await self._run(self._write(work))

    async def load_revocations(self) -> list[tuple[str, str, str, float]]:
        return await self._run(lambda db: [
            (row[0], row[1], row[2], float(row[3])) for row in db.execute(
                "SELECT document_id, user_id, access, expires_at FROM captify_revocations "
                "WHERE expires_at > ?", (time.time(),))])

    async def delete_document(self, document_id: str) -> bool:
        self._numbers.pop(document_id, None)

        def work(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM captify_updates WHERE doc IN "
                           "(SELECT num FROM captify_documents WHERE id = ?)", (document_id,))
                deleted = db.execute("DELETE FROM captify_documents WHERE id = ?",
                                     (document_id,)).rowcount
                deleted += db.execute("DELETE FROM captify_steps WHERE document_id = ?",
                                      (document_id,)).rowcount
                for table in ("captify_pm_snapshots", "captify_changes"):
                    db.execute(f"DELETE FROM {table} WHERE document_id = ?", (document_id,))
                if deleted:
                    history.write_deleted(db, document_id)
                db.execute("COMMIT")
                return bool(deleted)
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return await self._run(work)

    # -- history (store/history.py) -------------------------------------------------------

    async def read_feed(self, since: int, limit: int) -> list[FeedEntry]:
        return await self._run(lambda db: history.read_feed(db, since, min(limit, MAX_PAGE)))

    async def last_cursor(self) -> int:
        return await self._run(history.last_cursor)

    async def first_cursor(self) -> int:
        return await self._run(history.first_cursor)

    async def prune_feed(self, before: float, keep_after: int | None) -> int:
        return await self._run(self._write(lambda db: history.prune_feed(db, before,
                                                                         keep_after)))

    async def add_version(self, document_id: str, state: bytes, kind: VersionKind,
                          name: str | None, *, only_if_changed: bool = False,
                          who: Sequence[str] = (),
                          clients: Mapping[int, str] | None = None) -> VersionInfo | None:
        return await self._run(self._write(lambda db: history.add_version(
            db, document_id, state, kind, name, only_if_changed, who, clients)))

    async def list_versions(self, document_id: str, before: int | None,
                            limit: int) -> list[VersionInfo]:
        return await self._run(lambda db: history.list_versions(db, document_id, before,
                                                                min(limit, MAX_PAGE)))

    async def get_version(self, document_id: str, number: int) -> Version | None:
        return await self._run(lambda db: history.get_version(db, document_id, number))

    async def prune_versions(self, document_id: str, keep: int, older_than: float) -> int:
        return await self._run(self._write(lambda db: history.prune_versions(
            db, document_id, keep, older_than)))

    @staticmethod
    def _write(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        """``work`` in a write transaction, rolled back if it raises."""
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        return run

    # -- the step authority ----------------------------------------------------------------

    async def load_steps(self, document_id: str, since: int = 0) -> StepLog:
        def work(db: sqlite3.Connection) -> StepLog:
            row = db.execute("SELECT version, doc FROM captify_pm_snapshots "
                             "WHERE document_id = ?", (document_id,)).fetchone()
            steps = [StepRecord(int(v), step, client) for v, step, client in db.execute(
                "SELECT version, step, client_id FROM captify_steps WHERE document_id = ? "
                "AND version >= ? ORDER BY version", (document_id, since))]
            return StepLog((int(row[0]), row[1]) if row else None, steps)
        return await self._run(work)

    async def append_steps(self, document_id: str, version: int, steps: Sequence[str],
                           client_id: str, change_id: str | None = None) -> str:
        def work(db: sqlite3.Connection) -> str:
            db.execute("BEGIN IMMEDIATE")
            try:
                if change_id is not None:
                    try:
                        db.execute("INSERT INTO captify_changes (document_id, change_id, "
                                   "version) VALUES (?, ?, ?)", (document_id, change_id,
                                                                 version))
                    except sqlite3.IntegrityError:
                        db.execute("ROLLBACK")
                        return DUPLICATE
                try:
                    db.executemany(
                        "INSERT INTO captify_steps (document_id, version, step, client_id) "
                        "VALUES (?, ?, ?, ?)",
                        [(document_id, version + i, step, client_id)
                         for i, step in enumerate(steps)])
                except sqlite3.IntegrityError:
                    db.execute("ROLLBACK")
                    return CONFLICT
                db.execute("COMMIT")
                return APPENDED
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return await self._run(work)

    async def find_change(self, document_id: str, change_id: str) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT version FROM captify_changes WHERE document_id = ? AND "
                             "change_id = ?", (document_id, change_id)).fetchone()
            return None if row is None else int(row[0])
        return await self._run(work)

    async def save_step_snapshot(self, document_id: str, version: int, doc: str,
                                 keep_steps: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO captify_pm_snapshots (document_id, version, doc) "
                           "VALUES (?, ?, ?) ON CONFLICT (document_id) DO UPDATE SET "
                           "version = excluded.version, doc = excluded.doc "
                           "WHERE excluded.version > captify_pm_snapshots.version",
                           (document_id, version, doc))
                db.execute("DELETE FROM captify_steps WHERE document_id = ? AND version < ?",
                           (document_id, version - keep_steps))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        await self._run(work)


def migrate_sqlite(db: sqlite3.Connection, target: int | None = None) -> int:
    """Bring the schema to ``target`` (default: the newest); returns the version reached.

    Each step reads the version inside its write transaction, so processes opening the same
    new file at once (``--workers``) migrate it once, one after the other.
    """
    goal = len(SQLITE_MIGRATIONS) if target is None else target
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS captify_meta "
                       "(key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM captify_meta "
                             "WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > len(SQLITE_MIGRATIONS):
                raise StoreError(f"the store's schema version {version} is newer than this "
                                 f"captify-ws knows ({len(SQLITE_MIGRATIONS)}); upgrade "
                                 "captify-ws")
            if version >= goal:
                db.execute("COMMIT")
                return version
            for statement in SQLITE_MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO captify_meta (key, value) VALUES ('schema_version', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (str(version + 1),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
