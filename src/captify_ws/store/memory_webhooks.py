"""The memory store's webhook outbox (``store/webhooks.py``): for tests; lost on exit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from captify_ws.store.webhooks import (
    MAX_PER_ENDPOINT,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    pick_within,
)


class MemoryWebhooks:
    """``WebhookStore`` in lists, mixed into ``MemoryStore``."""

    def __init__(self) -> None:
        self._webhook_cursor = 0
        self._deliveries: dict[int, Delivery] = {}
        self._leases: dict[int, float] = {}

    async def webhook_cursor(self) -> int:
        return self._webhook_cursor

    async def enqueue_deliveries(self, expected_cursor: int | None, new_cursor: int,
                                 deliveries: Sequence[NewDelivery]) -> bool:
        if expected_cursor is not None:
            if expected_cursor != self._webhook_cursor:
                return False
            self._webhook_cursor = new_cursor
        now = time.time()
        for new in deliveries:
            number = max(self._deliveries, default=0) + 1
            self._deliveries[number] = Delivery(
                number, new.event_id, new.endpoint, new.document_id, new.event, new.payload,
                "pending", 0, now, new.next_at, 0, None, None)
        return True

    async def claim_deliveries(self, now: float, lease_s: float, limit: int,
                               per_endpoint: int = MAX_PER_ENDPOINT,
                               busy: Mapping[str, int] | None = None) -> list[Delivery]:
        heads: dict[tuple[str, str], Delivery] = {}
        for number in sorted(self._deliveries):
            delivery = self._deliveries[number]
            if delivery.status == "pending":
                heads.setdefault((delivery.endpoint, delivery.document_id), delivery)
        due = pick_within(sorted((d for d in heads.values()
                                  if d.next_at <= now and self._leases.get(d.id, 0.0) <= now),
                                 key=lambda d: d.id), limit, per_endpoint, busy)
        for delivery in due:
            self._leases[delivery.id] = now + lease_s
        return due

    async def finish_delivery(self, delivery_id: int, status: DeliveryStatus, attempts: int,
                              next_at: float, last_status: int, last_error: str | None,
                              now: float) -> None:
        delivery = self._deliveries[delivery_id]
        self._leases.pop(delivery_id, None)
        self._deliveries[delivery_id] = dataclasses.replace(
            delivery, status=status, attempts=attempts, next_at=next_at,
            last_status=last_status, last_error=last_error,
            delivered_at=now if status == "delivered" else delivery.delivered_at)

    async def list_deliveries(self, status: DeliveryStatus | None, before: int | None,
                              limit: int) -> list[Delivery]:
        return [self._deliveries[n] for n in sorted(self._deliveries, reverse=True)
                if (before is None or n < before)
                and (status is None or self._deliveries[n].status == status)][:limit]

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        delivery = self._deliveries.get(delivery_id)
        if delivery is None:
            return False
        self._leases.pop(delivery_id, None)
        self._deliveries[delivery_id] = dataclasses.replace(delivery, status="pending",
                                                            attempts=0, next_at=now)
        return True

    async def prune_deliveries(self, before: float) -> int:
        doomed = [n for n, d in self._deliveries.items()
                  if d.status != "pending" and d.created_at < before]
        for number in doomed:
            del self._deliveries[number]
        return len(doomed)

    async def delivery_counts(self) -> dict[str, int]:
        counts = {"pending": 0, "delivered": 0, "failed": 0}
        for delivery in self._deliveries.values():
            counts[delivery.status] += 1
        return counts
