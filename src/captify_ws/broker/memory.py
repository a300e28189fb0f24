"""The in-process broker: the default, and for tests that run several servers in one process.

What it cannot do: reach another process. Each ``captify-ws serve`` process has its own hub, so
with the default broker an instance hears nobody; several processes need ``redis``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from captify_ws.broker.base import MessageCallback, ReceiversCallback


class MemoryHub:
    """Connects the :class:`MemoryBroker` objects created with it."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroker]] = {}


def _ignore(channel: str, data: bytes) -> None:
    return None


def _nothing() -> None:
    return None


class MemoryBroker:
    """Delivers to the other brokers of the same hub, on the next loop iteration."""

    url = "memory"

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = hub if hub is not None else MemoryHub()
        self.error: str | None = None
        self.on_message: MessageCallback = _ignore
        self.on_reconnect: Callable[[], None] = _nothing
        self._channels: set[str] = set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)

    def publish(self, channel: str, data: bytes,
                on_receivers: ReceiversCallback | None = None) -> None:
        loop = asyncio.get_running_loop()
        subscribers = self.hub.subscribers.get(channel, ())
        for broker in subscribers:
            if broker is not self:
                loop.call_soon(broker.on_message, channel, data)
        if on_receivers is not None:
            # like Redis' PUBLISH reply: every subscriber of the hub, this one included
            loop.call_soon(on_receivers, len(subscribers))

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self.hub.subscribers.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        subscribers = self.hub.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.hub.subscribers[channel]

    async def check(self) -> None:
        return None
