"""The ``ChannelStore`` protocol: notifications (a mailbox, not a cache) and durable state.

Notifications are the source of truth for ``/ws/notifications``: a notification is stored
*before* it is published, so a user offline for a week misses nothing (the channel's history
is only the window that lets a reconnecting tab catch up without a query). Each user has an
unread count and an ``unread_version`` that grows with every change of that user's mailbox;
events carry both, so tabs that receive them out of order keep the newest count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

JsonValue = Any


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification; ``created_at``/``read_at`` in milliseconds since the Unix epoch."""

    id: int
    user_id: str
    kind: str
    payload: JsonValue
    created_at: int
    read_at: int | None = None

    def to_json(self) -> dict[str, JsonValue]:
        """What clients get (``notification.created`` data, the state's ``latest``)."""
        return {"id": self.id, "kind": self.kind, "payload": self.payload,
                "created_at": self.created_at, "read": self.read_at is not None}


@dataclass(frozen=True, slots=True)
class UnreadCount:
    """A user's unread count, and the version of the mailbox it was counted at."""

    count: int
    version: int


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`ChannelStore.add_notification` did: the (new or earlier) notification."""

    notification: Notification
    created: bool
    unread: UnreadCount


@dataclass(frozen=True, slots=True)
class MarkedRead:
    """Notifications that turned read (those already read are not listed)."""

    ids: tuple[int, ...]
    unread: UnreadCount


@runtime_checkable
class ChannelStore(Protocol):
    """Each method states its guarantee; all raise :class:`~captify_ws.errors.StoreError`."""

    url: str

    async def open(self) -> None:
        """Connect and migrate the channel tables (own schema version)."""
        ...

    async def close(self) -> None: ...

    async def check(self) -> None: ...

    async def add_notification(self, user_id: str, kind: str, payload_json: str,
                               dedupe_key: str | None) -> Added:
        """Store a notification, committed before this returns. With a ``dedupe_key`` the
        user already has, nothing is stored and the earlier notification is returned."""
        ...

    async def mark_read(self, user_id: str, ids: Sequence[int]) -> MarkedRead:
        """Mark the user's notifications ``ids`` read (others' ids are ignored)."""
        ...

    async def mark_all_read(self, user_id: str, up_to: int | None) -> MarkedRead:
        """Mark every unread notification of the user with ``id <= up_to`` (all: ``None``)
        read; ``ids`` of the answer is empty (it could be long), the count is exact."""
        ...

    async def unread(self, user_id: str) -> UnreadCount: ...

    async def notifications(self, user_id: str, *, before: int | None = None,
                            limit: int = 20) -> list[Notification]:
        """The user's notifications, newest first, with ``id < before`` when given."""
        ...

    async def load_state(self, channel: str) -> dict[str, str] | None:
        """The durable state of a channel (JSON-encoded values), or ``None``."""
        ...

    async def save_state(self, channel: str, epoch: str, offset: int,
                         state: dict[str, str]) -> None:
        """Keep the channel's state as of ``(epoch, offset)``; an older offset of the same
        epoch (a late writer) does not overwrite a newer one."""
        ...
