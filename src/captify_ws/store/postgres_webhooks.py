"""The PostgreSQL store's webhook outbox (``store/webhooks.py``), mixed into ``PostgresStore``.

The cursor's compare-and-set is one conditional UPDATE; claims lock the rows they lease
(``FOR UPDATE SKIP LOCKED``), so instances sending at once never claim the same delivery.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from captify_ws.store.webhooks import (
    MAX_PER_ENDPOINT,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    pick_within,
)

_COLUMNS = ("id, event_id, endpoint, document_id, event, payload, status, attempts, "
            "created_at, next_at, last_status, last_error, delivered_at")


def _delivery(row: Any) -> Delivery:
    return Delivery(int(row["id"]), row["event_id"], row["endpoint"], row["document_id"],
                    row["event"], row["payload"], row["status"], int(row["attempts"]),
                    float(row["created_at"]), float(row["next_at"]), int(row["last_status"]),
                    row["last_error"], row["delivered_at"])


class PostgresWebhooks:
    """``WebhookStore`` on the store's pool; needs ``_in_transaction``."""

    async def _in_transaction(self, work: Callable[[Any], Awaitable[Any]], *,
                              write: bool = False) -> Any:
        raise NotImplementedError

    async def webhook_cursor(self) -> int:
        async def work(conn: Any) -> int:
            value = await conn.fetchval("SELECT cursor FROM captify_webhook_cursor")
            return int(value) if value is not None else 0
        result: int = await self._in_transaction(work)
        return result

    async def enqueue_deliveries(self, expected_cursor: int | None, new_cursor: int,
                                 deliveries: Sequence[NewDelivery]) -> bool:
        now = time.time()

        async def work(conn: Any) -> bool:
            if expected_cursor is not None:
                status = await conn.execute("UPDATE captify_webhook_cursor SET cursor = $2 "
                                            "WHERE cursor = $1", expected_cursor, new_cursor)
                if status == "UPDATE 0":
                    return False
            await conn.executemany(
                "INSERT INTO captify_webhook_deliveries (event_id, endpoint, document_id, "
                "event, payload, status, attempts, created_at, next_at, last_status) "
                "VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, 0)",
                [(d.event_id, d.endpoint, d.document_id, d.event, d.payload, now, d.next_at)
                 for d in deliveries])
            return True
        result: bool = await self._in_transaction(work, write=True)
        return result

    async def claim_deliveries(self, now: float, lease_s: float, limit: int,
                               per_endpoint: int = MAX_PER_ENDPOINT,
                               busy: Mapping[str, int] | None = None) -> list[Delivery]:
        async def work(conn: Any) -> list[Delivery]:
            # Ranked per endpoint, so one endpoint's many due deliveries cannot fill the
            # page; then leased only if nobody leased them meanwhile (the UPDATE re-checks
            # each row under its lock: two instances never both get one).
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, row_number() OVER (PARTITION BY "
                "endpoint ORDER BY id) AS rank FROM captify_webhook_deliveries d WHERE "
                "status = 'pending' AND next_at <= $1 AND lease_until <= $1 AND NOT EXISTS "
                "(SELECT 1 FROM captify_webhook_deliveries e WHERE e.status = 'pending' AND "
                "e.endpoint = d.endpoint AND e.document_id = d.document_id AND e.id < d.id)) "
                "t WHERE rank <= $2 ORDER BY id LIMIT $3", now, per_endpoint,
                limit + sum((busy or {}).values()))
            picked = pick_within([_delivery(row) for row in rows], limit, per_endpoint, busy)
            leased = {row["id"] for row in await conn.fetch(
                "UPDATE captify_webhook_deliveries SET lease_until = $1 WHERE id = "
                "ANY($2::bigint[]) AND status = 'pending' AND lease_until <= $3 RETURNING id",
                now + lease_s, [delivery.id for delivery in picked], now)}
            return [delivery for delivery in picked if delivery.id in leased]
        result: list[Delivery] = await self._in_transaction(work, write=True)
        return result

    async def finish_delivery(self, delivery_id: int, status: DeliveryStatus, attempts: int,
                              next_at: float, last_status: int, last_error: str | None,
                              now: float) -> None:
        async def work(conn: Any) -> None:
            await conn.execute(
                "UPDATE captify_webhook_deliveries SET status = $2, attempts = $3, "
                "next_at = $4, last_status = $5, last_error = $6, lease_until = 0, "
                "delivered_at = CASE WHEN $2 = 'delivered' THEN $7 ELSE delivered_at END "
                "WHERE id = $1", delivery_id, status, attempts, next_at, last_status,
                last_error, now)
        await self._in_transaction(work, write=True)

    async def list_deliveries(self, status: DeliveryStatus | None, before: int | None,
                              limit: int) -> list[Delivery]:
        async def work(conn: Any) -> list[Delivery]:
            return [_delivery(row) for row in await conn.fetch(
                f"SELECT {_COLUMNS} FROM captify_webhook_deliveries WHERE id < $1 "
                "AND ($2::text IS NULL OR status = $2) ORDER BY id DESC LIMIT $3",
                before if before is not None else 2**62, status, limit)]
        result: list[Delivery] = await self._in_transaction(work)
        return result

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        async def work(conn: Any) -> bool:
            status = await conn.execute(
                "UPDATE captify_webhook_deliveries SET status = 'pending', attempts = 0, "
                "next_at = $2, lease_until = 0 WHERE id = $1", delivery_id, now)
            return bool(status != "UPDATE 0")
        result: bool = await self._in_transaction(work, write=True)
        return result

    async def prune_deliveries(self, before: float) -> int:
        async def work(conn: Any) -> int:
            status = await conn.execute("DELETE FROM captify_webhook_deliveries WHERE status "
                                        "IN ('delivered', 'failed') AND created_at < $1",
                                        before)
            return int(status.split()[-1])
        result: int = await self._in_transaction(work, write=True)
        return result

    async def delivery_counts(self) -> dict[str, int]:
        async def work(conn: Any) -> dict[str, int]:
            counts = {"pending": 0, "delivered": 0, "failed": 0}
            counts.update({row["status"]: int(row["count"]) for row in await conn.fetch(
                "SELECT status, count(*) AS count FROM captify_webhook_deliveries "
                "GROUP BY status")})
            return counts
        result: dict[str, int] = await self._in_transaction(work)
        return result
