"""The Redis broker's reader against a real Redis: what one instance publishes reaches another
that subscribed later (its reader waited, without an error, while nothing was subscribed), in
order; a Pub/Sub connection dropped by Redis, and a subscribe made while Redis was down, are
repaired by the reader's reconnect (on a private Redis: the shared one's clients are left
alone)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import redis.asyncio as aioredis

from captify_ws.broker.redis import RedisBroker
from tests.polling import eventually
from tests.services import private_redis, require_redis

URL = "redis://127.0.0.1:6379/0"


async def test_a_late_subscriber_hears_every_message_in_order() -> None:
    require_redis()
    channel = f"test-broker-{secrets.token_hex(4)}"
    sender, receiver = RedisBroker(URL), RedisBroker(URL)
    heard: list[tuple[str, bytes]] = []
    receiver.on_message = lambda name, data: heard.append((name, data))
    await sender.start()
    await receiver.start()
    try:
        await asyncio.sleep(0)  # the reader is waiting: nothing is subscribed yet
        await receiver.subscribe(channel)
        sent = [f"message {index}".encode() for index in range(200)]
        for data in sent:
            sender.publish(channel, data)
        await eventually(lambda: len(heard) >= len(sent), "every message")
        assert heard == [(channel, data) for data in sent]
    finally:
        await sender.stop()
        await receiver.stop()


async def test_a_dropped_pubsub_connection_is_subscribed_again() -> None:
    with private_redis() as redis:
        await _dropped_and_subscribed_again(redis.url)


async def _dropped_and_subscribed_again(url: str) -> None:
    channel = "test-broker"
    sender, receiver = RedisBroker(url), RedisBroker(url)
    heard: list[bytes] = []
    receiver.on_message = lambda name, data: heard.append(data)
    await sender.start()
    await receiver.start()
    admin = aioredis.from_url(url)
    try:
        await receiver.subscribe(channel)
        sender.publish(channel, b"before")
        await eventually(lambda: heard == [b"before"], "the first message")
        # Redis drops every Pub/Sub connection (the sender's publishing client is not one)
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: receiver.reconnects >= 1 and receiver.error is None,
                         "the reconnect")

        def heard_after() -> bool:
            sender.publish(channel, b"after")  # until one is published after the resubscribe
            return b"after" in heard
        await eventually(heard_after, "a message after the reconnect")
    finally:
        await admin.aclose()
        await sender.stop()
        await receiver.stop()


async def test_a_subscribe_while_redis_is_down_takes_effect_when_it_is_back() -> None:
    """The first subscribe is made while Redis is down: once Redis is back the reader
    reconnects and subscribes the channel; what is published then arrives, and publishing
    works again."""
    with private_redis() as redis:
        await _subscribed_while_down(redis)


async def _subscribed_while_down(redis: Any) -> None:
    channel = "test-broker"
    receiver = RedisBroker(redis.url)
    heard: list[bytes] = []
    receiver.on_message = lambda name, data: heard.append(data)
    await receiver.start()
    sender: RedisBroker | None = None
    try:
        redis.stop()
        await receiver.subscribe(channel)
        await eventually(lambda: receiver.error is not None, "the broker to notice")
        redis.start()
        await eventually(lambda: receiver.error is None, "the reconnect")
        sender = RedisBroker(redis.url)
        await sender.start()

        def heard_it() -> bool:
            assert sender is not None
            sender.publish(channel, b"back")
            return b"back" in heard
        await eventually(heard_it, "a message after Redis came back")
        receiver.publish(channel, b"from the receiver")
        await eventually(lambda: b"from the receiver" in heard, "the receiver's own publish")
    finally:
        if sender is not None:
            await sender.stop()
        await receiver.stop()
