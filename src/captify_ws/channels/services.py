"""What channel handlers may ask of the server, in one object: the narrow interface.

Handlers of the channel protocol (notifications, workflow, and any later one) receive a
:class:`ChannelServices` and nothing else: the hub (publish, subscribe, snapshots), the channel
store (mailboxes, durable state), the settings, the authorizer, the open sessions and the
online counts. :func:`build_channel_services` is the only place that looks at the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from captify_ws.auth import Access
from captify_ws.channels.backend import ChannelBackend
from captify_ws.channels.hub import ChannelHub, HubLimits
from captify_ws.channels.online import OnlineCounts
from captify_ws.channelstore import ChannelStore, channel_store_from_url
from captify_ws.config import Settings
from captify_ws.connection import Connection

if TYPE_CHECKING:
    from captify_ws.channels.endpoint import ChannelSession
    from captify_ws.channels.ingest import Ingest

logger = logging.getLogger("captify_ws.channels")

Authorize = Callable[[Connection, str], Awaitable[Access]]


class Part(Protocol):
    """A handler's background work (the agent watchdog): started and stopped with the hub."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class SessionRegistry:
    """The open channel sessions of this instance, by user (for revocation)."""

    by_user: dict[str, set[ChannelSession]] = field(default_factory=dict)
    count: int = 0

    def add(self, session: ChannelSession) -> None:
        self.count += 1
        user = session.user_id
        if user is not None:
            self.by_user.setdefault(user, set()).add(session)

    def discard(self, session: ChannelSession) -> None:
        self.count -= 1
        user = session.user_id
        sessions = self.by_user.get(user) if user is not None else None
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.by_user[user]  # type: ignore[arg-type]

    def of_user(self, user_id: str) -> set[ChannelSession]:
        return self.by_user.get(user_id, set())


@dataclass
class ChannelServices:
    """See the module docstring."""

    hub: ChannelHub
    store: ChannelStore
    settings: Settings
    authorize: Authorize
    online: OnlineCounts
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    ingest: Ingest | None = None
    #: handlers' own background work, started after the hub and stopped before it
    parts: list[Part] = field(default_factory=list)

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.hub.start()
        except BaseException:
            await self.store.close()
            raise
        await self.online.start()
        if self.ingest is not None:
            await self.ingest.start()
        for part in self.parts:
            await part.start()

    async def stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop()
        if self.ingest is not None:
            await self.ingest.stop()
        await self.online.stop()
        await self.hub.stop()
        await self.store.close()

    def revoke(self, channel: str, user_id: str, to: str) -> int:
        """A revocation (``Server.revoke``) reached this instance: subscriptions of
        ``channel`` by ``user_id`` end with 4403 when no access is left (read access is
        enough to stay subscribed)."""
        if to != "none":
            return 0
        from captify_ws.channels.endpoint import revoke_subscriptions

        return revoke_subscriptions(self.sessions.of_user(user_id), channel)


def hub_limits(settings: Settings) -> HubLimits:
    return HubLimits(publication_max_bytes=settings.channel_publication_max_bytes,
                     recovery_max_publications=settings.channel_recovery_max_publications,
                     recovery_max_bytes=settings.channel_recovery_max_bytes,
                     channel_name_max_bytes=settings.channel_name_max_bytes,
                     position_check_s=settings.channel_position_check_s)


def build_channel_services(settings: Settings, authorize: Authorize, instance_id: str, *,
                           store: ChannelStore | None = None) -> ChannelServices:
    """The channel side of a server, from its settings: the memory backend, or Redis (with
    the durable ingest and cluster-wide online counts) when ``broker`` is a Redis URL."""
    channel_store = store if store is not None else channel_store_from_url(settings.store)
    backend: ChannelBackend
    client: Any = None
    if settings.broker.startswith(("redis://", "rediss://", "unix://")):
        from captify_ws.channels.redis import RedisBackend

        redis_backend = RedisBackend(settings.broker, channel_store,
                                     prefix=settings.broker_prefix,
                                     state_max_keys=settings.channel_state_max_keys,
                                     idempotency_window_s=settings.channel_idempotency_window_s)
        backend, client = redis_backend, redis_backend.client
    else:
        from captify_ws.channels.memory import MemoryBackend

        backend = MemoryBackend(channel_store, state_max_keys=settings.channel_state_max_keys,
                                idempotency_window_s=settings.channel_idempotency_window_s)
    hub = ChannelHub(backend, hub_limits(settings))
    online = OnlineCounts(client, prefix=settings.broker_prefix, instance=instance_id,
                          ttl_s=settings.online_ttl_s)
    ingest = None
    if client is not None and settings.channel_ingest:
        from captify_ws.channels.ingest import Ingest

        ingest = Ingest(client, hub, prefix=settings.broker_prefix, consumer=instance_id,
                        claim_idle_s=settings.channel_ingest_claim_idle_s)
    return ChannelServices(hub, channel_store, settings, authorize, online, ingest=ingest)
