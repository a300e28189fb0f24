"""Access control of one server: what a connection must pass before its handler sees it.

Origins (cross-site WebSocket hijacking), connection limits per instance, address and user,
authentication (then the ``on_authenticate`` hooks), authorization per document with the
revocations that override it for ``revocation_ttl_s`` on every instance. :class:`AccessControl`
is one part of :class:`~captify_ws.server.Server` (the composition root assembles it); it
declares below the server attributes it uses.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from captify_ws.auth import (
    ANONYMOUS,
    Access,
    Authenticator,
    Authorizer,
    Principal,
    with_timeout,
)
from captify_ws.broker.base import Broker, KeyValueBroker
from captify_ws.config import Settings
from captify_ws.connection import Connection, UpgradeRequest
from captify_ws.errors import BrokerError, CloseCode, Reject
from captify_ws.handlers.base import handler_name
from captify_ws.hooks import HookRunner
from captify_ws.metrics import Stats
from captify_ws.rooms.manager import RoomManager
from captify_ws.store.base import DocumentStore

if TYPE_CHECKING:
    from captify_ws.channels.services import ChannelServices
    from captify_ws.cluster.bridge import ClusterBridge
    from captify_ws.history.webhooks import WebhookSender

logger = logging.getLogger("captify_ws.server")


def _count(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether a browser Origin matches the allowlist (``*`` and ``https://*.example.com``)."""
    origin = origin.rstrip("/").lower()
    for entry in allowed:
        pattern = entry.rstrip("/").lower()
        if pattern == "*" or fnmatch.fnmatchcase(origin, pattern):
            return True
    return False


class AccessControl:
    """The access part of the server. See the module docstring."""

    settings: Settings
    stats: Stats
    hooks: HookRunner
    rooms: RoomManager
    authenticator: Authenticator
    authorizer: Authorizer
    store: DocumentStore
    broker: Broker | None
    connections: dict[str, set[Connection]]
    channel_services: ChannelServices
    cluster: ClusterBridge | None
    webhooks: WebhookSender
    stopping: bool
    _per_user: dict[str, int]
    _per_address: dict[str, int]
    #: (document_id, user_id) → (expires at, "none" | "read")
    _revoked: dict[tuple[str, str], tuple[float, str]]

    def admit(self, request: UpgradeRequest) -> None:
        """Refuse an upgrade before it is accepted (raise :class:`~captify_ws.errors.Reject`):
        a server shutting down, or a browser page from an origin not allowed (cross-site
        WebSocket hijacking)."""
        if self.stopping:
            raise Reject(CloseCode.GOING_AWAY, "server is shutting down")
        allowed = self.settings.allowed_origins
        if allowed:
            origin = request.header("origin")
            if origin is not None and not origin_allowed(origin, allowed):
                logger.info("refused an upgrade from origin %s", origin)
                self.stats.refused("origin")
                raise Reject(CloseCode.POLICY, "this origin is not allowed")

    def client_address(self, request: UpgradeRequest) -> str | None:
        """The client's address; behind a trusted proxy, from X-Forwarded-For."""
        if request.client is None:
            return None
        address = request.client[0]
        trusted = self.settings.trusted_proxies
        if address in trusted:
            forwarded = [part.strip() for part in
                         (request.header("x-forwarded-for") or "").split(",") if part.strip()]
            for hop in reversed(forwarded):
                if hop not in trusted:
                    return hop
        return address

    async def _gate(self, conn: Connection) -> None:
        """Limits and authentication, before the handler sees the connection."""
        settings = self.settings
        local = sum(len(conns) for conns in self.connections.values())
        if local > settings.max_connections:
            raise Reject(CloseCode.OVERLOADED, "server is full")
        address = self.client_address(conn.request)
        if address is not None and not _is_loopback(address):
            if self._per_address.get(address, 0) >= settings.max_connections_per_ip:
                raise Reject(CloseCode.RATE_LIMITED, "too many connections from this address")
            _count(self._per_address, address, +1)
            conn.on_closed(lambda _: _count(self._per_address, address, -1))
        try:
            principal = await with_timeout(self.authenticator.authenticate(conn.request),
                                           settings.auth_timeout_s)
        except Reject as exc:
            # A handler whose messages carry their own credentials (Hocuspocus: a token per
            # document) accepts an upgrade without any; it authenticates each document.
            if exc.code != CloseCode.UNAUTHORIZED or \
                    not getattr(conn.handler, "authenticates_messages", False):
                raise
            self.hooks.connected(conn, handler_name(conn.handler))
            return
        principal = await self.hooks.authenticate(conn, principal)
        conn.principal = principal
        user = principal.user_id
        if user is not None:
            if self._per_user.get(user, 0) >= settings.max_connections_per_user:
                raise Reject(CloseCode.RATE_LIMITED, "too many connections for this user")
            _count(self._per_user, user, +1)
            conn.on_closed(lambda _: _count(self._per_user, user, -1))
        self.webhooks.connection_event("connection.opened", conn)
        self.hooks.connected(conn, handler_name(conn.handler))

    async def authorize(self, conn: Connection, document_id: str, *,
                        principal: Principal | None = None) -> Access:
        """What ``conn`` (or ``principal``, when a document authenticated apart from its
        connection) may do with ``document_id``; raises ``Reject(4403)`` for nothing."""
        if principal is None:
            principal = conn.principal if isinstance(conn.principal, Principal) else ANONYMOUS
        revoked = self._revocation(document_id, principal.user_id)
        if revoked == "none":
            raise Reject(CloseCode.FORBIDDEN, "Access denied")
        try:
            access = await asyncio.wait_for(
                self.authorizer.authorize(principal, document_id, conn.request),
                self.settings.auth_timeout_s)
        except TimeoutError:
            raise Reject(CloseCode.AUTH_TIMEOUT, "authorization timed out") from None
        return "read" if revoked == "read" else access

    def creator_of(self, conn: Connection) -> str:
        """Who is charged for the documents ``conn`` creates: its user, or for an anonymous
        connection its client address (``document_create_rate``)."""
        principal = conn.principal
        user = principal.user_id if isinstance(principal, Principal) else None
        if user is not None:
            return f"user:{user}"
        return f"address:{self.client_address(conn.request) or 'unknown'}"

    def _revocation(self, document_id: str, user_id: str | None) -> str | None:
        if user_id is None or not self._revoked:
            return None
        entry = self._revoked.get((document_id, user_id))
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._revoked[(document_id, user_id)]
            return None
        return entry[1]

    async def revoke(self, document_id: str, user_id: str, to: str = "none") -> int:
        """Take a user's access to a document away (``to="none"``: their connections close
        with 4403) or down to read-only (``to="read"``), on every instance, for
        ``revocation_ttl_s`` seconds whatever the authorizer says. Returns the connections
        changed on this instance.

        The revocation is stored (``DocumentStore.save_revocation``) before this returns:
        it holds across restarts, and instances that start later load it from a shared store
        (issue 13.8). Raises :class:`~captify_ws.errors.StoreError` if it could not be stored
        (it holds on the running instances all the same)."""
        if to not in ("none", "read"):
            raise ValueError("to must be 'none' or 'read'")
        changed = self._apply_revocation(document_id, user_id, to)
        if self.cluster is not None:
            self.cluster.publish_control({"type": "revoke", "documentId": document_id,
                                          "userId": user_id, "to": to})
        await self.store.save_revocation(document_id, user_id, to,
                                         time.time() + self.settings.revocation_ttl_s)
        if isinstance(self.broker, KeyValueBroker):
            # Instances with stores of their own hear of it too, when they start later.
            try:
                await self.broker.remember(
                    self._revocation_key() + json.dumps([document_id, user_id]), to,
                    self.settings.revocation_ttl_s)
            except BrokerError as exc:
                logger.warning("revocation stored, not in the broker: %s", exc)
        return changed

    def _revocation_key(self) -> str:
        return f"{self.settings.broker_prefix}:revoked:"

    async def load_broker_revocations(self) -> None:
        """Take in the revocations the broker keeps (on start, once it is connected)."""
        if not isinstance(self.broker, KeyValueBroker):
            return
        prefix = self._revocation_key()
        monotonic = time.monotonic()
        try:
            found = await self.broker.recall(prefix)
        except BrokerError as exc:
            logger.warning("could not read revocations from the broker: %s", exc)
            return
        for key, to, left in found:
            try:
                document_id, user_id = json.loads(key[len(prefix):])
            except ValueError:
                continue
            if to in ("none", "read") and isinstance(document_id, str) and \
                    isinstance(user_id, str):
                self._revoked[(document_id, user_id)] = (monotonic + left, to)

    async def load_revocations(self) -> None:
        """Take in the stored revocations that have not expired (on start)."""
        wall, monotonic = time.time(), time.monotonic()
        for document_id, user_id, to, expires_at in await self.store.load_revocations():
            self._revoked[(document_id, user_id)] = (monotonic + expires_at - wall, to)

    def _apply_revocation(self, document_id: str, user_id: str, to: str) -> int:
        self._revoked[(document_id, user_id)] = (
            time.monotonic() + self.settings.revocation_ttl_s, to)
        forget = getattr(self.authorizer, "forget", None)
        if callable(forget):
            forget(document_id, user_id)
        changed = self.channel_services.revoke(document_id, user_id, to)
        room = self.rooms.get(document_id)
        if room is None:
            return changed
        for member in room.all_members():
            principal = member.principal or member.connection.principal
            if not isinstance(principal, Principal) or principal.user_id != user_id:
                continue
            changed += 1
            member.revoke("none" if to == "none" else "read")
        return changed
