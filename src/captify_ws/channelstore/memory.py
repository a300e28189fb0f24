"""The channel store in memory: for ``--store memory`` (tests). Lost when the process exits."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from captify_ws.channelstore.base import Added, MarkedRead, Notification, UnreadCount


class MemoryChannelStore:
    """See the module docstring; one process only."""

    url = "memory"

    def __init__(self) -> None:
        self._notifications: dict[str, dict[int, Notification]] = {}
        self._dedupe: dict[tuple[str, str], int] = {}
        self._versions: dict[str, int] = {}
        self._next_id = 1
        self._states: dict[str, tuple[str, int, dict[str, str]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        return None

    def _unread(self, user_id: str) -> UnreadCount:
        mailbox = self._notifications.get(user_id, {})
        count = sum(1 for item in mailbox.values() if item.read_at is None)
        return UnreadCount(count, self._versions.get(user_id, 0))

    def _bump(self, user_id: str) -> None:
        self._versions[user_id] = self._versions.get(user_id, 0) + 1

    async def add_notification(self, user_id: str, kind: str, payload_json: str,
                               dedupe_key: str | None) -> Added:
        if dedupe_key is not None:
            known = self._dedupe.get((user_id, dedupe_key))
            if known is not None:
                return Added(self._notifications[user_id][known], False, self._unread(user_id))
        notification = Notification(self._next_id, user_id, kind, json.loads(payload_json),
                                    int(time.time() * 1000))
        self._next_id += 1
        self._notifications.setdefault(user_id, {})[notification.id] = notification
        if dedupe_key is not None:
            self._dedupe[(user_id, dedupe_key)] = notification.id
        self._bump(user_id)
        return Added(notification, True, self._unread(user_id))

    def _mark(self, user_id: str, wanted: Sequence[int] | None, up_to: int | None) -> list[int]:
        mailbox = self._notifications.get(user_id, {})
        now = int(time.time() * 1000)
        changed = []
        candidates = wanted if wanted is not None else list(mailbox)
        for ident in candidates:
            item = mailbox.get(ident)
            if item is None or item.read_at is not None or (up_to is not None and ident > up_to):
                continue
            mailbox[ident] = Notification(item.id, item.user_id, item.kind, item.payload,
                                          item.created_at, now)
            changed.append(ident)
        if changed:
            self._bump(user_id)
        return changed

    async def mark_read(self, user_id: str, ids: Sequence[int]) -> MarkedRead:
        changed = self._mark(user_id, ids, None)
        return MarkedRead(tuple(sorted(changed)), self._unread(user_id))

    async def mark_all_read(self, user_id: str, up_to: int | None) -> MarkedRead:
        self._mark(user_id, None, up_to)
        return MarkedRead((), self._unread(user_id))

    async def unread(self, user_id: str) -> UnreadCount:
        return self._unread(user_id)

    async def notifications(self, user_id: str, *, before: int | None = None,
                            limit: int = 20) -> list[Notification]:
        mailbox = self._notifications.get(user_id, {})
        ids = sorted((i for i in mailbox if before is None or i < before), reverse=True)
        return [mailbox[i] for i in ids[:limit]]

    async def load_state(self, channel: str) -> dict[str, str] | None:
        entry = self._states.get(channel)
        return dict(entry[2]) if entry is not None else None

    async def save_state(self, channel: str, epoch: str, offset: int,
                         state: dict[str, str]) -> None:
        entry = self._states.get(channel)
        if entry is not None and entry[0] == epoch and entry[1] >= offset:
            return
        self._states[channel] = (epoch, offset, dict(state))
