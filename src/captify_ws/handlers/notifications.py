"""``/ws/notifications``: each user's mailbox, pushed — a mailbox, not a cache.

The user's own channel ``notifications:{user_id}`` is subscribed implicitly when the
connection opens (the user is the authenticated principal; a client never names another
user's channel), with ``since`` from the query string (``?offset=17&epoch=k2f9``) when the tab
has a position. Events:

* ``notification.created {id, kind, payload, created_at, read, unread_count, unread_version}``
* ``notification.read {ids | up_to, unread_count, unread_version}``

``unread_count`` is absolute, so every tab converges; when two events arrive in another order
than they were counted, the higher ``unread_version`` wins. The state a (re)connecting tab gets
with ``recovered:false`` is ``{unread_count, unread_version, latest: [newest first]}``; older
pages come over HTTP (``GET /api/v1/notifications?user_id=&before=&limit=``).

Commands: ``{"type":"mark_read","id":1,"ids":[…]}`` and
``{"type":"mark_all_read","id":2,"up_to":130}``; the reply is
``{"unread_count","unread_version","ids"?}``, and every tab gets ``notification.read``.

Notifications are stored first (:mod:`captify_ws.channelstore`), then published; the
channel's history is only the window that lets a reconnecting tab catch up without a query.
"""

from __future__ import annotations

import logging
from typing import Any

from captify_ws.auth import Principal
from captify_ws.channels.endpoint import ChannelEndpoint, ChannelSession
from captify_ws.channels.services import ChannelServices
from captify_ws.channels.types import (
    ChannelClass,
    ChannelSnapshot,
    Retention,
    SnapshotSource,
)
from captify_ws.channelstore.base import Notification, UnreadCount
from captify_ws.connection import Connection
from captify_ws.errors import ChannelError, CloseCode, Reject
from captify_ws.handlers.base import HandlerContext
from captify_ws.protocol import channels as wire

logger = logging.getLogger("captify_ws.notifications")

CLASS = "notifications"
#: Most ids one mark_read may name.
MAX_IDS = 1000
MAX_USER_ID_CHARS = 200


def channel_of(user_id: str) -> str:
    return f"{CLASS}:{user_id}"


def _own_channel(principal: Any, channel: str) -> bool:
    return isinstance(principal, Principal) and principal.user_id is not None and \
        channel == channel_of(principal.user_id)


def _counts(unread: UnreadCount) -> dict[str, int]:
    return {"unread_count": unread.count, "unread_version": unread.version}


def _check_user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_CHARS:
        raise ChannelError(CloseCode.BAD_REQUEST,
                           f"user_id must be a string of 1 to {MAX_USER_ID_CHARS} characters")
    wire.check_channel(channel_of(user_id), 1 << 16)
    return user_id


class Mailbox:
    """Store first, then publish: the notifications API (Python, HTTP, commands)."""

    def __init__(self, services: ChannelServices) -> None:
        self.services = services
        self.store = services.store
        self.hub = services.hub

    async def notify_user(self, user_id: str, kind: str, payload: Any, *,
                          dedupe_key: str | None = None) -> Notification:
        """Store a notification for ``user_id``, then publish ``notification.created``.

        With a ``dedupe_key`` the user already has, nothing new is stored and the earlier
        notification is returned (and published again only if it never was): retrying a
        failed call with the same key is safe. Raises ``ChannelError`` (4400 bad arguments,
        1009 payload past ``notifications_payload_max_bytes``), ``StoreError``, and
        ``BrokerError`` when stored but not published (retry with the dedupe key)."""
        _check_user(user_id)
        if not isinstance(kind, str) or not 0 < len(kind) <= 128:
            raise ChannelError(CloseCode.BAD_REQUEST, "kind must be a string of 1 to 128 "
                               "characters")
        if dedupe_key is not None and (not isinstance(dedupe_key, str)
                                       or not 0 < len(dedupe_key) <= 256):
            raise ChannelError(CloseCode.BAD_REQUEST, "dedupe_key must be a string of 1 to "
                               "256 characters")
        try:
            payload_json = wire.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ChannelError(CloseCode.BAD_REQUEST, f"payload is not JSON: {exc}") from None
        limit = self.services.settings.notifications_payload_max_bytes
        if len(payload_json.encode()) > limit:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG, f"payload larger than {limit} bytes")
        added = await self.store.add_notification(user_id, kind, payload_json, dedupe_key)
        item = added.notification
        await self.hub.publish(channel_of(user_id), "notification.created",
                               {**item.to_json(), **_counts(added.unread)},
                               idempotency_key=f"notification:{item.id}")
        return item

    async def mark_read(self, user_id: str, ids: list[int]) -> dict[str, Any]:
        """Mark ``ids`` read; every tab of the user gets ``notification.read``."""
        marked = await self.store.mark_read(user_id, ids)
        counts = _counts(marked.unread)
        if marked.ids:
            await self.hub.publish(channel_of(user_id), "notification.read",
                                   {"ids": list(marked.ids), **counts})
        return {"ids": list(marked.ids), **counts}

    async def mark_all_read(self, user_id: str, up_to: int | None) -> dict[str, Any]:
        """Mark every notification up to ``up_to`` (all: ``None``) read."""
        before = await self.store.unread(user_id)
        marked = await self.store.mark_all_read(user_id, up_to)
        counts = _counts(marked.unread)
        if marked.unread.version != before.version:
            await self.hub.publish(channel_of(user_id), "notification.read",
                                   {"up_to": up_to, **counts})
        return counts

    async def page(self, user_id: str, before: int | None, limit: int) -> dict[str, Any]:
        """A page of the mailbox, newest first (HTTP ``GET /api/v1/notifications``)."""
        _check_user(user_id)
        items = await self.store.notifications(user_id, before=before, limit=limit)
        unread = await self.store.unread(user_id)
        return {"notifications": [item.to_json() for item in items], **_counts(unread)}

    async def snapshot(self, channel: str, source: SnapshotSource) -> ChannelSnapshot:
        """The state for ``recovered:false``: the position first, then the store (which then
        covers at least that position; clients drop repeats by notification id)."""
        merged = await source.merged_state()
        user_id = channel.split(":", 1)[1]
        unread = await self.store.unread(user_id)
        latest = await self.store.notifications(
            user_id, limit=self.services.settings.notifications_latest_count)
        state = {**_counts(unread), "latest": [item.to_json() for item in latest]}
        return ChannelSnapshot(merged.position, wire.dumps(state))


def _ids(request: wire.Command) -> list[int]:
    ids = request.fields.get("ids")
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_IDS or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ChannelError(CloseCode.BAD_REQUEST,
                           f"'ids' must be a list of 1 to {MAX_IDS} notification ids")
    return ids


class NotificationsHandler(ChannelEndpoint):
    """See the module docstring."""

    def __init__(self, server: HandlerContext) -> None:
        services = server.channel_services
        settings = services.settings
        self.mailbox = Mailbox(services)
        mailbox_class = ChannelClass(
            CLASS,
            Retention(history_size=settings.notifications_history_size,
                      history_ttl_s=settings.notifications_history_ttl_s,
                      meta_ttl_s=max(settings.channel_meta_ttl_s,
                                     settings.notifications_history_ttl_s)),
            snapshot=self.mailbox.snapshot, authorize=_own_channel,
            description="a user's own notifications")
        super().__init__(services, "/ws/notifications", "notifications", [mailbox_class],
                         commands={"mark_read": self._mark_read,
                                   "mark_all_read": self._mark_all_read},
                         on_session=self._subscribe_own)

    async def _subscribe_own(self, session: ChannelSession) -> None:
        user_id = session.user_id
        if user_id is None:
            raise Reject(CloseCode.UNAUTHORIZED, "/ws/notifications needs an authenticated "
                         "user (--auth jwt, session-proxy or your own)")
        self.services.online.add(user_id)
        channel = channel_of(user_id)
        query = session.conn.request.query
        try:
            since = None
            if "offset" in query:
                try:
                    offset = int(query["offset"])
                except ValueError:
                    raise ChannelError(CloseCode.BAD_REQUEST, "malformed since: 'offset' in "
                                       "the query must be an integer") from None
                request = wire.decode_message({"type": "subscribe", "channel": channel,
                                               "since": {"offset": offset,
                                                         "epoch": query.get("epoch", "")}})
                assert isinstance(request, wire.Subscribe)
                since = request.since
            await session.subscribe(None, channel, since)
        except ChannelError as exc:
            session.send(wire.encode_error(None, exc.code, exc.message, channel))

    def on_close(self, conn: Connection, code: int) -> None:
        session = conn.state
        if isinstance(session, ChannelSession) and session.user_id is not None:
            self.services.online.remove(session.user_id)
        super().on_close(conn, code)

    async def _mark_read(self, session: ChannelSession, request: wire.Command) -> Any:
        assert session.user_id is not None
        return await self.mailbox.mark_read(session.user_id, _ids(request))

    async def _mark_all_read(self, session: ChannelSession, request: wire.Command) -> Any:
        assert session.user_id is not None
        up_to = request.fields.get("up_to")
        if up_to is not None and (not isinstance(up_to, int) or isinstance(up_to, bool)):
            raise ChannelError(CloseCode.BAD_REQUEST, "'up_to' must be a notification id")
        return await self.mailbox.mark_all_read(session.user_id, up_to)

