"""The Redis broker: Pub/Sub between instances, with redis-py's asyncio client.

Publishing never waits on the hot path: messages go to an outbox that one task sends in
pipelined batches; a publication that asked for it is told its ``PUBLISH`` reply (how many
subscribers it reached) once its batch is sent. Receiving runs in one task that feeds
:attr:`on_message`. When Redis goes away both tasks retry with backoff; on reconnect every
channel is subscribed again and :attr:`on_reconnect` runs, so the cluster bridge can repair what
Pub/Sub dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from captify_ws.backoff import Backoff
from captify_ws.broker.base import MessageCallback, ReceiversCallback
from captify_ws.errors import BrokerError
from captify_ws.store.postgres import mask_url
from captify_ws.tasks import close_broken, wait_ended

logger = logging.getLogger("captify_ws.broker")

#: Messages kept for publishing while Redis is unreachable; older ones are dropped.
OUTBOX_LIMIT: Final = 100_000
#: Commands per pipeline.
BATCH: Final = 512


def _ignore(channel: str, data: bytes) -> None:
    return None


def _nothing() -> None:
    return None


class RedisBroker:
    """See the module docstring."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.url = mask_url(url)
        self.error: str | None = None
        self.on_message: MessageCallback = _ignore
        self.on_reconnect: Callable[[], None] = _nothing
        self.reconnects = 0
        self._client: Any = None
        self._pubsub: Any = None
        self._channels: set[str] = set()
        self._outbox: deque[tuple[str, bytes, ReceiversCallback | None]] = deque(
            maxlen=OUTBOX_LIMIT)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        #: set by a subscribe: the reader waits for it (at most 1 s at a time, to notice a
        #: failure) while nothing is subscribed
        self._subscribed = asyncio.Event()

    def _new_client(self) -> Any:
        return aioredis.from_url(self._url, socket_connect_timeout=3, socket_timeout=None,
                                 health_check_interval=0, retry_on_timeout=False)

    async def start(self) -> None:
        self._client = self._new_client()
        try:
            await asyncio.wait_for(self._client.ping(), 5)
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            if self._channels:
                await self._pubsub.subscribe(*self._channels)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._client.aclose()
            raise BrokerError(f"cannot connect to the broker {self.url}: "
                              f"{exc or type(exc).__name__}") from exc
        self._connected.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(), name="captify-broker-read"),
                       loop.create_task(self._publish(), name="captify-broker-publish")]

    async def stop(self) -> None:
        if self._outbox and self.error is None:
            self._wake.set()
            for _ in range(50):
                if not self._outbox:
                    break
                await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await wait_ended(self._tasks, logger)
        self._tasks = []
        if self._pubsub is not None:
            await close_broken(self._pubsub.aclose, logger, "the broker's Pub/Sub connection")
        if self._client is not None:
            await close_broken(self._client.aclose, logger, "the broker's Redis client")

    def publish(self, channel: str, data: bytes,
                on_receivers: ReceiversCallback | None = None) -> None:
        self._outbox.append((channel, data, on_receivers))
        self._wake.set()

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        if self._pubsub is not None and self.error is None:
            try:
                await self._pubsub.subscribe(channel)
                self._subscribed.set()
            except (RedisError, OSError) as exc:
                self._failed(exc)  # the reader resubscribes everything when it reconnects

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        if self._pubsub is not None and self.error is None:
            try:
                await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:  # a reconnect subscribes only what is left
                logger.info("broker: unsubscribing %s failed: %s", channel, exc)

    async def remember(self, key: str, value: str, ttl_s: float) -> None:
        try:
            await self._client.set(key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            raise BrokerError(f"broker {self.url}: {exc or type(exc).__name__}") from exc

    async def recall(self, prefix: str) -> list[tuple[str, str, float]]:
        found = []
        try:
            async for key in self._client.scan_iter(match=prefix + "*", count=500):
                value, left = await self._client.get(key), await self._client.pttl(key)
                if value is not None and left > 0:
                    found.append((key.decode(), value.decode(), left / 1000))
        except (RedisError, OSError) as exc:
            raise BrokerError(f"broker {self.url}: {exc or type(exc).__name__}") from exc
        return found

    async def check(self) -> None:
        if self.error is not None:
            raise BrokerError(f"broker {self.url}: {self.error}")
        try:
            await asyncio.wait_for(self._client.ping(), 3)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerError(f"broker {self.url}: {exc or type(exc).__name__}") from exc

    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            logger.error("broker %s unreachable, retrying: %s", self.url, exc)
        self.error = str(exc) or type(exc).__name__
        self._connected.clear()

    async def _publish(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                if self.error is not None:
                    await self._connected.wait()
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                pipe = self._client.pipeline(transaction=False)
                for channel, data, _ in batch:
                    pipe.publish(channel, data)
                try:
                    receivers = await pipe.execute()
                    backoff.reset()
                except (RedisError, OSError) as exc:
                    # At most once: what could not be published is dropped; anti-entropy
                    # after the reconnect repairs it.
                    self._failed(exc)
                    await backoff.wait()
                    continue
                self._tell_receivers(batch, receivers)

    @staticmethod
    def _tell_receivers(batch: list[tuple[str, bytes, ReceiversCallback | None]],
                        receivers: list[int]) -> None:
        """Each PUBLISH reply (its receiver count) to the publication's callback, if any."""
        for (_, _, on_receivers), count in zip(batch, receivers, strict=True):
            if on_receivers is not None:
                try:
                    on_receivers(count)
                except Exception:
                    logger.exception("broker receivers callback failed")

    async def _read(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.error is not None:
                    await self._reconnect()
                    backoff.reset()
                if self._pubsub.connection is None:  # nothing subscribed yet: no error
                    self._subscribed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._subscribed.wait(), 1.0)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, RuntimeError) as exc:
                self._failed(exc)
                await backoff.wait()
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            try:
                self.on_message(channel.decode() if isinstance(channel, bytes) else channel,
                                message["data"])
            except Exception:
                logger.exception("broker message handler failed")

    async def _reconnect(self) -> None:
        """A new Pub/Sub connection with every channel subscribed again."""
        if self._pubsub is not None:
            await close_broken(self._pubsub.aclose, logger, "the broker's Pub/Sub connection")
            self._pubsub = None
        await close_broken(self._client.aclose, logger, "the broker's Redis client")
        self._client = self._new_client()
        await asyncio.wait_for(self._client.ping(), 5)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if self._channels:
            await pubsub.subscribe(*self._channels)
        self._pubsub = pubsub
        self.error = None
        self.reconnects += 1
        self._connected.set()
        self._wake.set()
        logger.warning("broker %s reconnected", self.url)
        self.on_reconnect()
