"""The Redis channel backend: streams, positions and state in Redis; any instance recovers any
subscriber. The keys and the scripts are in :mod:`captify_ws.channels.scripts`.

Commands go through one client (redis-py, asyncio); publications are heard on one Pub/Sub
connection per instance, subscribed to the fan-out channel of every channel that has local
subscribers. :meth:`RedisBackend.listen` returns only once Redis confirmed the subscription,
so a read made afterwards cannot miss a publication that the subscription does not deliver.
When the Pub/Sub connection breaks, it is made again with every channel, and ``on_reconnect``
lets the hub compare positions (publications sent meanwhile were lost to Pub/Sub, not to the
streams).

Durable state: when a class keeps its state in the SQL store, each publication's script
answers the merged state, which is written there; when Redis lost a channel (a restart), the
scripts answer ``seed`` and the state is put back from the SQL store in a new epoch first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from captify_ws.backoff import Backoff
from captify_ws.channels import scripts
from captify_ws.channels.backend import PublicationCallback
from captify_ws.channels.memory import UNPUBLISHED_TTL_S, new_epoch
from captify_ws.channels.state import state_json
from captify_ws.channels.types import (
    ChannelSnapshot,
    Outgoing,
    Position,
    Published,
    Retention,
    StreamRead,
)
from captify_ws.channelstore.base import ChannelStore
from captify_ws.errors import BrokerError, ChannelError, CloseCode
from captify_ws.store.postgres import mask_url
from captify_ws.tasks import close_broken, wait_ended

logger = logging.getLogger("captify_ws.channels.redis")

#: Seconds a command may take before the backend counts as unreachable.
COMMAND_TIMEOUT_S = 5.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _created_ttl(retention: Retention) -> int:
    """Seconds a position created by a read (no publication yet) is kept."""
    return max(1, int(min(retention.meta_ttl_s, UNPUBLISHED_TTL_S)))


def _ignore(channel: str, offset: int | None, epoch: str, frame: str) -> None:
    return None


def _nothing() -> None:
    return None


class RedisBackend:
    """See the module docstring."""

    lossy = True

    def __init__(self, url: str, store: ChannelStore, *, prefix: str = "captify",
                 state_max_keys: int = 1000, idempotency_window_s: float = 300.0) -> None:
        self._url = url
        self.url = mask_url(url)
        self.prefix = prefix
        self._store = store
        self._state_max_keys = state_max_keys
        self._window = max(1, int(idempotency_window_s))
        self.on_publication: PublicationCallback = _ignore
        self.on_reconnect: Callable[[], None] = _nothing
        self.client: Any = aioredis.from_url(url, socket_connect_timeout=3,
                                             socket_timeout=COMMAND_TIMEOUT_S,
                                             health_check_interval=0)
        self._publish = self.client.register_script(scripts.PUBLISH)
        self._read = self.client.register_script(scripts.READ)
        self._snapshot = self.client.register_script(scripts.SNAPSHOT)
        self._seed = self.client.register_script(scripts.SEED)
        self._listening: set[str] = set()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.reconnects = 0

    # -- keys ------------------------------------------------------------------------------

    def key(self, channel: str, suffix: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{suffix}"

    def fanout_channel(self, channel: str) -> str:
        return self.key(channel, "p")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), 5)
            self._pubsub = self.client.pubsub()
            # A Pub/Sub connection needs one subscription before it can be read.
            await self._pubsub.subscribe(self.key("-", "p"))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerError(f"cannot connect to the channel backend {self.url}: "
                              f"{exc or type(exc).__name__}") from exc
        self._reader = asyncio.get_running_loop().create_task(self._read_forever(),
                                                              name="captify-channel-pubsub")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await wait_ended([self._reader], logger)
            self._reader = None
        if self._pubsub is not None:
            await close_broken(self._pubsub.aclose, logger, "the channel Pub/Sub connection")
        await close_broken(self.client.aclose, logger, "the channel backend's Redis client")

    async def check(self) -> None:
        if self.error is not None:
            raise BrokerError(f"channel backend {self.url}: {self.error}")
        await self._call(self.client.ping())

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerError(f"channel backend {self.url}: "
                              f"{exc or type(exc).__name__}") from exc

    # -- scripts ---------------------------------------------------------------------------

    async def _seed_from_store(self, channel: str, retention: Retention) -> None:
        state = await self._store.load_state(channel) or {}
        args: list[Any] = [new_epoch(), int(retention.meta_ttl_s)]
        for key, value in state.items():
            args += [key, value]
        await self._call(self._seed(keys=[self.key(channel, "m"), self.key(channel, "st"),
                                          self.key(channel, "s")], args=args))

    async def publish(self, channel: str, outgoing: Outgoing,
                      retention: Retention) -> Published:
        durable = retention.durable_state
        idem = outgoing.idempotency_key
        keys = [self.key(channel, "s"), self.key(channel, "m"), self.key(channel, "st"),
                self.key(channel, f"i:{idem}" if idem is not None else "i")]
        args: list[Any] = [
            self.fanout_channel(channel), outgoing.head, outgoing.tail, retention.history_size,
            max(1, int(retention.history_ttl_s)), max(1, int(retention.meta_ttl_s)),
            new_epoch(), "" if outgoing.version is None else repr(outgoing.version),
            self._window if idem is not None else 0, self._state_max_keys,
            "1" if durable else "0", "1" if durable and outgoing.state_fields else "0",
            "1" if outgoing.seal else "0"]
        for key, value in outgoing.state_fields:
            args += [key, "" if value is None else value]
        for _ in range(3):
            answer = await self._call(self._publish(keys=keys, args=args))
            kind = _text(answer[0])
            if kind != "seed":
                break
            await self._seed_from_store(channel, retention)
        else:
            raise BrokerError(f"channel {channel!r}: could not restore its state")
        if kind == "dup":
            offset_text, epoch_text = _text(answer[1]).split(" ", 1)
            return Published(int(offset_text), epoch_text, duplicate=True)
        if kind == "stale":
            return Published(int(answer[1]), _text(answer[2]), stale=True)
        if kind == "sealed":
            return Published(int(answer[1]), _text(answer[2]), sealed=True)
        if kind == "full":
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                               f"the channel's state would have more than "
                               f"{self._state_max_keys} keys")
        offset, epoch = int(answer[1]), _text(answer[2])
        if len(answer) > 3:
            pairs = answer[3]
            state = {_text(pairs[i]): _text(pairs[i + 1]) for i in range(0, len(pairs), 2)}
            await self._store.save_state(channel, epoch, offset, state)
        return Published(offset, epoch)

    async def publish_ephemeral(self, channel: str, frame: str) -> None:
        await self._call(self.client.publish(self.fanout_channel(channel), "- - " + frame))

    async def read(self, channel: str, since_offset: int, limit: int,
                   retention: Retention, *, partial: bool = False) -> StreamRead:
        keys = [self.key(channel, "s"), self.key(channel, "m")]
        for _ in range(3):
            answer = await self._call(self._read(keys=keys, args=[
                since_offset, limit, new_epoch(), "1" if retention.durable_state else "0",
                _created_ttl(retention), "1" if partial else "0"]))
            if _text(answer[0]) != "seed":
                break
            await self._seed_from_store(channel, retention)
        else:
            raise BrokerError(f"channel {channel!r}: could not restore its state")
        publications = tuple((int(_text(entry_id).split("-", 1)[0]), _text(fields[1]))
                             for entry_id, fields in answer[4])
        return StreamRead(Position(int(answer[2]), _text(answer[1])), publications,
                          int(answer[3]))

    async def snapshot(self, channel: str, retention: Retention) -> ChannelSnapshot:
        keys = [self.key(channel, "m"), self.key(channel, "st"), self.key(channel, "s")]
        for _ in range(3):
            answer = await self._call(self._snapshot(keys=keys, args=[
                new_epoch(), "1" if retention.durable_state else "0", _created_ttl(retention)]))
            if _text(answer[0]) != "seed":
                break
            await self._seed_from_store(channel, retention)
        else:
            raise BrokerError(f"channel {channel!r}: could not restore its state")
        pairs = answer[3]
        state = [(_text(pairs[i]), _text(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        return ChannelSnapshot(Position(int(answer[2]), _text(answer[1])), state_json(state))

    async def positions(self, channels: list[str]) -> dict[str, Position | None]:
        out: dict[str, Position | None] = {}
        for start in range(0, len(channels), 500):
            batch = channels[start:start + 500]
            pipe = self.client.pipeline(transaction=False)
            for channel in batch:
                pipe.hmget(self.key(channel, "m"), "e", "t")
            answers = await self._call(pipe.execute())
            for channel, (epoch, top) in zip(batch, answers, strict=True):
                out[channel] = Position(int(top), _text(epoch)) \
                    if epoch is not None and top is not None else None
        return out

    # -- fan-out ---------------------------------------------------------------------------

    async def listen(self, channel: str) -> None:
        if channel in self._listening:
            waiting = self._confirmations.get(channel)
            if waiting is not None:
                await asyncio.shield(waiting)
            return
        self._listening.add(channel)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            if self.error is None:
                await self._call(self._pubsub.subscribe(self.fanout_channel(channel)))
            await asyncio.wait_for(asyncio.shield(confirmed), COMMAND_TIMEOUT_S)
        except (BrokerError, TimeoutError) as exc:
            self._listening.discard(channel)
            self._confirmations.pop(channel, None)
            raise BrokerError(f"channel backend {self.url}: could not listen to {channel!r}: "
                              f"{exc or type(exc).__name__}") from None

    async def unlisten(self, channel: str) -> None:
        if channel not in self._listening:
            return
        self._listening.discard(channel)
        self._confirmations.pop(channel, None)
        if self.error is None:
            try:
                await self._pubsub.unsubscribe(self.fanout_channel(channel))
            except (RedisError, OSError) as exc:  # a reconnect subscribes only what is left
                logger.info("channel %s: unsubscribing failed: %s", channel, exc)

    def _channel_of(self, fanout: str) -> str | None:
        head = f"{self.prefix}:{{"
        if fanout.startswith(head) and fanout.endswith("}:p"):
            return fanout[len(head):-3]
        return None

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = _text(message.get("type", ""))
        channel = self._channel_of(_text(message.get("channel", "")))
        if channel is None:
            return
        if kind == "subscribe":
            waiting = self._confirmations.pop(channel, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        if kind != "message":
            return
        data = message["data"]
        head, _, frame = data.partition(b" ")
        epoch, _, frame = frame.partition(b" ")
        offset = None if head == b"-" else int(head)
        self.on_publication(channel, offset, "" if offset is None else epoch.decode(),
                            frame.decode())

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.error is not None:
                    await self._reconnect()
                    backoff.reset()
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, RuntimeError, ValueError) as exc:
                if self.error is None:
                    logger.error("channel backend %s unreachable, retrying: %s", self.url, exc)
                self.error = str(exc) or type(exc).__name__
                await backoff.wait()
                continue
            if message is None:
                continue
            try:
                self._on_message(message)
            except Exception:
                logger.exception("channel publication handling failed")

    async def _reconnect(self) -> None:
        if self._pubsub is not None:
            await close_broken(self._pubsub.aclose, logger, "the channel Pub/Sub connection")
            self._pubsub = None
        await asyncio.wait_for(self.client.ping(), 5)
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self.key("-", "p"),
                               *[self.fanout_channel(channel) for channel in self._listening])
        self._pubsub = pubsub
        self.error = None
        self.reconnects += 1
        logger.warning("channel backend %s reconnected", self.url)
        self.on_reconnect()
