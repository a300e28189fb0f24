"""What the stores keep of webhook deliveries: a durable outbox with a delivery log.

A delivery is one event for one endpoint URL. Deliveries are created from the change feed in
the transaction that moves the feed cursor of webhooks (compare-and-set: of instances reading
the same feed, one creates each delivery), or directly (connection events). A sender claims
due deliveries with a lease (a claimed delivery whose sender died is claimed again when the
lease ends: at-least-once; receivers deduplicate by ``webhook-id``). Of the pending deliveries
of one endpoint and one document, only the oldest may be claimed: at most one in flight per
document, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to create."""

    event_id: str
    endpoint: str
    #: the ordering key: the document id, or "" for events of no document
    document_id: str
    event: str
    #: the JSON body, as sent
    payload: str
    #: epoch seconds when it may first be sent
    next_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery and what became of it."""

    id: int
    event_id: str
    endpoint: str
    document_id: str
    event: str
    payload: str
    status: DeliveryStatus
    attempts: int
    created_at: float
    next_at: float
    #: HTTP status of the last attempt (0: no answer)
    last_status: int
    last_error: str | None
    delivered_at: float | None

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "eventId": self.event_id, "endpoint": self.endpoint,
                "documentId": self.document_id or None, "event": self.event,
                "status": self.status, "attempts": self.attempts,
                "createdAt": self.created_at, "nextAt": self.next_at,
                "lastStatus": self.last_status or None, "lastError": self.last_error,
                "deliveredAt": self.delivered_at}


#: ``claim_deliveries``'s default per-endpoint bound (no bound)
MAX_PER_ENDPOINT = 2**31


def pick_within(candidates: Iterable[Delivery], limit: int, per_endpoint: int,
                busy: Mapping[str, int] | None) -> list[Delivery]:
    """The first ``limit`` of ``candidates`` (oldest first) keeping each endpoint within
    ``per_endpoint`` minus what is ``busy`` there. A store that reads candidates ranked per
    endpoint needs the first ``limit + sum(busy)``: at most ``busy[e]`` of endpoint ``e``'s
    first ``per_endpoint`` are passed over."""
    taken: dict[str, int] = dict(busy or {})
    out: list[Delivery] = []
    for delivery in candidates:
        if len(out) >= limit:
            break
        if taken.get(delivery.endpoint, 0) < per_endpoint:
            taken[delivery.endpoint] = taken.get(delivery.endpoint, 0) + 1
            out.append(delivery)
    return out


@runtime_checkable
class WebhookStore(Protocol):
    """The webhook outbox of a store (``memory``, ``sqlite``, ``postgres``)."""

    async def webhook_cursor(self) -> int:
        """The feed cursor up to which deliveries were created (0 at first)."""
        ...

    async def enqueue_deliveries(self, expected_cursor: int | None, new_cursor: int,
                                 deliveries: Sequence[NewDelivery]) -> bool:
        """Create deliveries and move the webhook cursor from ``expected_cursor`` to
        ``new_cursor`` in one transaction; ``False`` (nothing created) if the cursor was no
        longer ``expected_cursor``. With ``expected_cursor=None`` the cursor is left alone."""
        ...

    async def claim_deliveries(self, now: float, lease_s: float, limit: int,
                               per_endpoint: int = MAX_PER_ENDPOINT,
                               busy: Mapping[str, int] | None = None) -> list[Delivery]:
        """Pending deliveries due at ``now`` whose lease ran out, each the oldest pending one
        of its endpoint and document; leased for ``lease_s`` seconds. Oldest first, at most
        ``limit``, and at most ``per_endpoint`` minus ``busy[endpoint]`` (the caller's
        deliveries in flight there) of one endpoint: a hanging endpoint cannot take every
        slot (``pick_within``)."""
        ...

    async def finish_delivery(self, delivery_id: int, status: DeliveryStatus, attempts: int,
                              next_at: float, last_status: int, last_error: str | None,
                              now: float) -> None:
        """Record an attempt: delivered, failed for good, or pending again at ``next_at``
        (the lease ends)."""
        ...

    async def list_deliveries(self, status: DeliveryStatus | None, before: int | None,
                              limit: int) -> list[Delivery]:
        """Deliveries newest first (ids below ``before``), of one status or all."""
        ...

    async def redeliver(self, delivery_id: int, now: float) -> bool:
        """Make a delivery pending again, due now, its attempts reset; ``False`` if unknown."""
        ...

    async def prune_deliveries(self, before: float) -> int:
        """Delete delivered and failed deliveries created before ``before`` (epoch seconds);
        pending ones stay. Returns how many."""
        ...

    async def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are pending, delivered and failed."""
        ...
