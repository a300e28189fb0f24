"""1,000 publications while a subscriber disconnects and reconnects at random: it gets every
one exactly once, in order (after dropping repeats by offset) — in one process and on Redis."""

from __future__ import annotations

import asyncio
import random
import secrets
from typing import Any

import pytest

import captify_ws
from captify_ws.client import ChannelClient
from tests.channels.support import until
from tests.helpers import running_server
from tests.services import REDIS_URL, require_redis


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_thousand_publications_through_random_disconnects(broker: str) -> None:
    """Random network drops (no close handshake) during 1,000 publications: the subscriber's
    deliveries are exactly offsets 1..1000 with their data, each once, in order."""
    overrides: dict[str, Any] = {}
    if broker == "redis":
        require_redis()
        overrides = {"broker": REDIS_URL, "broker_prefix": f"test-{secrets.token_hex(4)}",
                     "channel_meta_ttl_s": 600, "workflow_history_ttl_s": 600}
    rng = random.Random(17)
    async with running_server(**overrides) as srv:
        client = ChannelClient(f"{srv.ws}/ws/workflow", min_delay_s=0.005, max_delay_s=0.05)
        sub = client.subscribe("workflow:storm")
        delivered: list[tuple[int, Any]] = []

        async def consume() -> None:
            async for pub in client.publications():
                if pub.get("type") == "pub":
                    delivered.append((pub["offset"], pub["data"]))

        async with client:
            consumer = asyncio.get_running_loop().create_task(consume())
            await until(lambda: sub.status == "live", "subscribed")
            drops = 0
            for i in range(1, 1001):
                await captify_ws.publish("workflow:storm", "tick", {"i": i},
                                         state_patch={"last": i})
                if rng.random() < 0.03:
                    client.drop_connection()
                    drops += 1
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.random() * 0.004)
            await until(lambda: sub.offset == 1000, "the subscriber at offset 1000")
            await until(lambda: len(delivered) >= 1000, "1000 deliveries")
            consumer.cancel()
        assert drops >= 10 and client.connects >= 10
        assert delivered == [(i, {"i": i}) for i in range(1, 1001)]
        assert sub.state == {"last": 1000} and sub.resets == [None]


async def test_lost_fanout_is_repaired_from_the_stream() -> None:
    """Redis Pub/Sub drops a publication (fault injected: it is appended but fanned out
    nowhere): the next one reveals the gap and the hole is read back from the stream; a lost
    *last* publication is found by the position check. Subscribers get every offset once."""
    require_redis()
    async with running_server(broker=REDIS_URL, broker_prefix=f"test-{secrets.token_hex(4)}",
                              channel_meta_ttl_s=600, workflow_history_ttl_s=600,
                              channel_position_check_s=0.2) as srv:
        hub = srv.server.channel_services.hub
        backend: Any = hub.backend
        client = ChannelClient(f"{srv.ws}/ws/workflow")
        sub = client.subscribe("workflow:lossy")
        heard: list[int] = []
        remove = await hub.add_listener("workflow:lossy", lambda c, o, e, f: heard.append(o))
        async with client:
            await until(lambda: sub.status == "live", "subscribed")
            real = backend.fanout_channel

            async def lost(index: int) -> None:
                backend.fanout_channel = lambda channel: f"{real(channel)}:nowhere"
                try:
                    await captify_ws.publish("workflow:lossy", "n", index)
                finally:
                    backend.fanout_channel = real

            await captify_ws.publish("workflow:lossy", "n", 1)
            await lost(2)
            await lost(3)
            await captify_ws.publish("workflow:lossy", "n", 4)
            await until(lambda: sub.offset == 4, "the hole repaired")
            await lost(5)
            await until(lambda: sub.offset == 5, "the lost last one found by the check")
        remove()
        assert heard == [1, 2, 3, 4, 5]
        assert hub.counters["repairs"] >= 2 and sub.resets == [None]
