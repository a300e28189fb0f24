"""The SQLite store's webhook outbox (``store/webhooks.py``), mixed into ``SqliteStore``.

One writer at a time: the cursor's compare-and-set and a claim's lease are read and written in
one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from captify_ws.store.webhooks import (
    MAX_PER_ENDPOINT,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    pick_within,
)

T = TypeVar("T")

_COLUMNS = ("id, event_id, endpoint, document_id, event, payload, status, attempts, "
            "created_at, next_at, last_status, last_error, delivered_at")


def _delivery(row: Any) -> Delivery:
    return Delivery(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], int(row[7]),
                    float(row[8]), float(row[9]), int(row[10]), row[11],
                    None if row[12] is None else float(row[12]))


class SqliteWebhooks:
    """``WebhookStore`` on the store's connection; needs ``_run`` and ``_write``."""

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    @staticmethod
    def _write(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        raise NotImplementedError

    async def webhook_cursor(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM captify_meta "
                             "WHERE key = 'webhook_cursor'").fetchone()
            return int(row[0]) if row else 0
        return await self._run(work)

    async def enqueue_deliveries(self, expected_cursor: int | None, new_cursor: int,
                                 deliveries: Sequence[NewDelivery]) -> bool:
        now = time.time()

        def work(db: sqlite3.Connection) -> bool:
            if expected_cursor is not None:
                row = db.execute("SELECT value FROM captify_meta "
                                 "WHERE key = 'webhook_cursor'").fetchone()
                if (int(row[0]) if row else 0) != expected_cursor:
                    return False
                db.execute("INSERT INTO captify_meta (key, value) VALUES ('webhook_cursor', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           (str(new_cursor),))
            db.executemany(
                "INSERT INTO captify_webhook_deliveries (event_id, endpoint, document_id, "
                "event, payload, status, attempts, created_at, next_at, last_status) "
                "VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, 0)",
                [(d.event_id, d.endpoint, d.document_id, d.event, d.payload, now, d.next_at)
                 for d in deliveries])
            return True
        return await self._run(self._write(work))

    async def claim_deliveries(self, now: float, lease_s: float, limit: int,
                               per_endpoint: int = MAX_PER_ENDPOINT,
                               busy: Mapping[str, int] | None = None) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            # The heads (oldest pending per endpoint and document) from one pass over the
            # covering index, not a correlated NOT EXISTS per pending row: with 37,000
            # deliveries waiting for down receivers that took 350-700 ms per claim, all of it
            # holding the writer every document commit waits for (now 20-60 ms).
            # Ranked per endpoint, so one endpoint's many due deliveries cannot fill the page.
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, row_number() OVER (PARTITION BY "
                "endpoint ORDER BY id) AS rank FROM captify_webhook_deliveries d WHERE id IN "
                "(SELECT MIN(id) FROM captify_webhook_deliveries WHERE status = 'pending' "
                "GROUP BY endpoint, document_id) AND next_at <= ? AND lease_until <= ?) "
                "WHERE rank <= ? ORDER BY id LIMIT ?",
                (now, now, per_endpoint, limit + sum((busy or {}).values()))).fetchall()
            picked = pick_within([_delivery(row) for row in rows], limit, per_endpoint, busy)
            db.executemany("UPDATE captify_webhook_deliveries SET lease_until = ? WHERE id = ?",
                           [(now + lease_s, delivery.id) for delivery in picked])
            return picked
        return await self._run(self._write(work))

    async def finish_delivery(self, delivery_id: int, status: DeliveryStatus, attempts: int,
                              next_at: float, last_status: int, last_error: str | None,
                              now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE captify_webhook_deliveries SET status = ?, attempts = ?, "
                       "next_at = ?, last_status = ?, last_error = ?, lease_until = 0, "
                       "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
                       "WHERE id = ?", (status, attempts, next_at, last_status, last_error,
                                        status, now, delivery_id))
        await self._run(self._write(work))

    async def list_deliveries(self, status: DeliveryStatus | None, before: int | None,
                              limit: int) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            return [_delivery(row) for row in db.execute(
                f"SELECT {_COLUMNS} FROM captify_webhook_deliveries WHERE id < ? "
                "AND (? IS NULL OR status = ?) ORDER BY id DESC LIMIT ?",
                (before if before is not None else 2**62, status, status, limit))]
        return await self._run(work)

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return bool(db.execute(
                "UPDATE captify_webhook_deliveries SET status = 'pending', attempts = 0, "
                "next_at = ?, lease_until = 0 WHERE id = ?", (now, delivery_id)).rowcount)
        return await self._run(self._write(work))

    async def prune_deliveries(self, before: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            return int(db.execute("DELETE FROM captify_webhook_deliveries WHERE status IN "
                                  "('delivered', 'failed') AND created_at < ?",
                                  (before,)).rowcount)
        return await self._run(self._write(work))

    async def delivery_counts(self) -> dict[str, int]:
        def work(db: sqlite3.Connection) -> dict[str, int]:
            counts = {"pending": 0, "delivered": 0, "failed": 0}
            counts.update({status: int(count) for status, count in db.execute(
                "SELECT status, count(*) FROM captify_webhook_deliveries GROUP BY status")})
            return counts
        return await self._run(work)
