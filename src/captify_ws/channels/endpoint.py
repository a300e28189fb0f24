"""A WebSocket endpoint of the channel protocol: the generic half of a channel handler.

:class:`ChannelEndpoint` is a complete :class:`~captify_ws.handlers.base.Handler`: it decodes
requests (``protocol/channels.py``), enforces the per-connection bounds, authorizes every
subscribe (recoveries included) through the configured authorizer, and answers through the
hub. A handler gives it meaning by passing the channel classes it serves, its own commands
(``mark_read``, ``cancel`` …) and, optionally, what to do when a connection opens
(notifications subscribe the user's own channel there).

Bounds (Settings): ``channels_per_connection_max``, ``channel_subscribe_rate_per_s`` and
``channel_subscribe_burst``, ``channel_request_max_bytes``. Past one, that request gets an
``error`` and the connection, its other channels and every other connection carry on.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from captify_ws.auth import Principal
from captify_ws.channels.services import ChannelServices
from captify_ws.channels.types import ChannelClass
from captify_ws.connection import Connection
from captify_ws.errors import BrokerError, ChannelError, CloseCode, Reject, StoreError
from captify_ws.protocol import channels as wire

logger = logging.getLogger("captify_ws.channels")

#: A handler's command: gets the session and the request, answers the ``reply`` data (or
#: ``None`` for no reply) or raises ``ChannelError``.
CommandHandler = Callable[["ChannelSession", wire.Command], Awaitable[Any]]
#: Runs once a connection is accepted and authenticated.
ConnectHook = Callable[["ChannelSession"], Awaitable[None]]


_ID = re.compile(r'"id"\s*:\s*(\d{1,15})\b')


def _peek_id(head: str | bytes) -> int | None:
    """The request id near the start of a request too big to parse (best effort)."""
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    match = _ID.search(text)
    return int(match.group(1)) if match else None


class ChannelSession:
    """One connection's subscriptions and bounds (kept in ``conn.state``)."""

    __slots__ = ("channels", "conn", "endpoint", "stamp", "tokens")

    def __init__(self, conn: Connection, endpoint: ChannelEndpoint) -> None:
        self.conn = conn
        self.endpoint = endpoint
        #: channels subscribed (or being subscribed)
        self.channels: set[str] = set()
        self.tokens = float(endpoint.services.settings.channel_subscribe_burst)
        self.stamp = time.monotonic()

    @property
    def principal(self) -> Principal:
        principal = self.conn.principal
        return principal if isinstance(principal, Principal) else Principal(None)

    @property
    def user_id(self) -> str | None:
        return self.principal.user_id

    def send(self, text: str) -> None:
        self.conn.send_text(text)

    def take_subscribe_token(self) -> bool:
        settings = self.endpoint.services.settings
        now = time.monotonic()
        self.tokens = min(float(settings.channel_subscribe_burst),
                          self.tokens + (now - self.stamp) * settings.channel_subscribe_rate_per_s)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    async def subscribe(self, ident: int | None, channel: str,
                        since: wire.Since | None) -> None:
        """Subscribe this connection (the handlers' implicit subscriptions call it too)."""
        await self.endpoint.subscribe(self, ident, channel, since)


class ChannelEndpoint:
    """See the module docstring."""

    def __init__(self, services: ChannelServices, path: str, name: str,
                 classes: Iterable[ChannelClass], *,
                 commands: dict[str, CommandHandler] | None = None,
                 on_session: ConnectHook | None = None) -> None:
        self.path = path
        self.name = name
        self.services = services
        self.classes = {klass.name: klass for klass in classes}
        for klass in self.classes.values():
            services.hub.register(klass)
        self.commands = commands or {}
        self._on_session = on_session

    # -- Handler ---------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        session = ChannelSession(conn, self)
        conn.state = session
        self.services.sessions.add(session)
        if self._on_session is not None:
            await self._on_session(session)

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        session = conn.state
        if not isinstance(session, ChannelSession):
            return
        settings = self.services.settings
        ident: int | None = None
        channel: str | None = None
        try:
            if len(message) > settings.channel_request_max_bytes:
                ident = _peek_id(message[:256])
                raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                                   f"request larger than {settings.channel_request_max_bytes} "
                                   "bytes")
            parsed = wire.decode_json(message)
            ident = wire.request_id(parsed)
            raw_channel = parsed.get("channel")
            channel = raw_channel if isinstance(raw_channel, str) and \
                len(raw_channel) <= settings.channel_name_max_bytes else None
            request = wire.decode_message(parsed,
                                          max_channel_bytes=settings.channel_name_max_bytes)
            if isinstance(request, wire.Subscribe):
                if not session.take_subscribe_token():
                    raise ChannelError(CloseCode.RATE_LIMITED,
                                       f"more than {settings.channel_subscribe_rate_per_s:g} "
                                       "subscribes per second")
                await self.subscribe(session, request.request_id, request.channel,
                                     request.since)
            elif isinstance(request, wire.Unsubscribe):
                self.unsubscribe(session, request.channel)
                session.send(wire.encode_unsubscribed(request.channel, request.request_id))
            else:
                await self._command(session, request)
        except ChannelError as exc:
            session.send(wire.encode_error(ident, exc.code, exc.message, channel))
        except Reject as exc:
            session.send(wire.encode_error(ident, exc.code, exc.reason, channel))
        except (BrokerError, StoreError) as exc:
            logger.warning("channel request failed: %s", exc)
            session.send(wire.encode_error(ident, CloseCode.OVERLOADED,
                                           "temporarily unavailable, try again", channel))

    def on_close(self, conn: Connection, code: int) -> None:
        session = conn.state
        if not isinstance(session, ChannelSession):
            return
        hub = self.services.hub
        for channel in session.channels:
            hub.unsubscribe(conn, channel)
        session.channels.clear()
        self.services.sessions.discard(session)

    def on_error(self, conn: Connection, error: Exception) -> None:
        return None

    # -- requests --------------------------------------------------------------------------

    async def subscribe(self, session: ChannelSession, ident: int | None, channel: str,
                        since: wire.Since | None) -> None:
        klass = self.classes.get(wire.channel_class(channel))
        if klass is None:
            served = ", ".join(f"{name}:…" for name in sorted(self.classes))
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"unknown channel class for {self.path}: {channel!r} "
                               f"(this endpoint serves {served})")
        if channel in session.channels:
            raise ChannelError(CloseCode.BAD_REQUEST, f"already subscribed to {channel!r}")
        limit = self.services.settings.channels_per_connection_max
        if len(session.channels) >= limit:
            raise ChannelError(CloseCode.RATE_LIMITED,
                               f"more than {limit} channels on one connection")
        session.channels.add(channel)
        try:
            await self.authorize(session, klass, channel)
            if session.conn.close_code is not None:
                raise ChannelError(CloseCode.GOING_AWAY, "connection closing")
            await self.services.hub.subscribe(session.conn, ident, channel, since)
        except BaseException:
            session.channels.discard(channel)
            raise

    async def authorize(self, session: ChannelSession, klass: ChannelClass,
                        channel: str) -> None:
        """Whether ``session`` may subscribe ``channel``; raises ``ChannelError(4403)`` or
        ``Reject``. Handlers with their own rule (an agent run's owner) override it."""
        if klass.authorize is not None:
            if not klass.authorize(session.principal, channel):
                raise ChannelError(CloseCode.FORBIDDEN, f"access to {channel!r} denied")
        else:
            # Every subscribe, recovering or not, asks the authorizer (a channel is a
            # resource like a document); revocations are checked there too.
            await self.services.authorize(session.conn, channel)

    def unsubscribe(self, session: ChannelSession, channel: str) -> None:
        if channel in session.channels:
            session.channels.discard(channel)
            self.services.hub.unsubscribe(session.conn, channel)

    async def _command(self, session: ChannelSession, request: wire.Command) -> None:
        handler = self.commands.get(request.kind)
        if handler is None:
            known = ", ".join(["subscribe", "unsubscribe", *sorted(self.commands)])
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"unknown request type {request.kind!r} (known: {known})")
        result = await handler(session, request)
        if result is not None or request.request_id is not None:
            session.send(wire.encode_reply(request.request_id, result))


def revoke_subscriptions(sessions: Iterable[ChannelSession], channel: str) -> int:
    """Close the given sessions' subscriptions of ``channel`` with 4403 (live revocation)."""
    closed = 0
    for session in list(sessions):
        if channel in session.channels:
            session.endpoint.unsubscribe(session, channel)
            session.send(wire.encode_unsubscribed(channel, code=CloseCode.FORBIDDEN,
                                                  reason="access revoked"))
            closed += 1
    return closed
