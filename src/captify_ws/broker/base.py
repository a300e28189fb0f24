"""The ``Broker`` protocol: how the instances of a deployment tell each other about changes.

A broker moves opaque messages on named channels between instances. It guarantees nothing
beyond "usually, quickly": Redis Pub/Sub, like the network, drops what is published while a
subscriber is disconnected. captify-ws never relies on delivery: the cluster bridge
(``cluster.py``) runs anti-entropy (state-vector exchange) on reconnect and periodically, and
the shared store holds every accepted update.

Implementations: ``memory`` (the default; single process — it only connects servers that share
one :class:`~captify_ws.broker.memory.MemoryHub`, which ``captify-ws serve`` never does) and
``redis`` (``redis://host:6379/0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: ``on_message(channel, data)``: called in the event loop for every message received.
MessageCallback = Callable[[str, bytes], None]
#: ``on_receivers(count)``: how many subscribers of the channel one publication reached, the
#: publisher's own subscription included (Redis' ``PUBLISH`` reply).
ReceiversCallback = Callable[[int], None]


@runtime_checkable
class Broker(Protocol):
    """Publish/subscribe between instances. Each method states its guarantee."""

    #: the URL as configured, password masked
    url: str
    #: why the broker cannot deliver right now, or ``None``
    error: str | None
    #: set by the cluster bridge before :meth:`start`
    on_message: MessageCallback
    #: called after the connection came back (messages may have been lost meanwhile)
    on_reconnect: Callable[[], None]

    async def start(self) -> None:
        """Connect. Raises :class:`~captify_ws.errors.BrokerError` naming the URL if the broker
        cannot be reached at start; later outages are retried without raising."""
        ...

    async def stop(self) -> None:
        """Disconnect; messages still queued for publishing are sent first when possible."""
        ...

    def publish(self, channel: str, data: bytes,
                on_receivers: ReceiversCallback | None = None) -> None:
        """Queue ``data`` for ``channel``; never blocks, never raises. At most once: dropped
        when the broker is unreachable (anti-entropy repairs what that loses).

        ``on_receivers``, when given, is called later in the event loop with the number of
        subscribers the publication reached at the broker, this broker's own subscription
        included; it is not called when the publication was dropped (a reconnect follows,
        :attr:`on_reconnect`)."""
        ...

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``'s messages from now on (and again after every reconnect)."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        ...

    async def check(self) -> None:
        """Raise :class:`~captify_ws.errors.BrokerError` with the reason if it is unusable."""
        ...


@runtime_checkable
class KeyValueBroker(Protocol):
    """A broker that also keeps small values with an expiry for every instance (Redis), such
    as revocations (``access.py``)."""

    async def remember(self, key: str, value: str, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds, for every instance and across
        restarts of any. Raises :class:`~captify_ws.errors.BrokerError` when unreachable."""
        ...

    async def recall(self, prefix: str) -> list[tuple[str, str, float]]:
        """Every ``(key, value, seconds left)`` whose key starts with ``prefix``. Raises
        :class:`~captify_ws.errors.BrokerError` when unreachable."""
        ...
