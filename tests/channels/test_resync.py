"""A live gap that cannot be repaired (the lost publications are gone from the stream too):
that channel's subscribers get ``resync`` with the reason, the state and the new position; the
socket and its other channels carry on, and the channel goes on live from there."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import captify_ws
from tests.channels.support import pubs, raw, subscribe
from tests.helpers import JsonClient, running_server
from tests.services import REDIS_URL, require_redis


async def test_unrepairable_gap_resyncs_that_channel_only() -> None:
    """On Redis: publications 3..5 of workflow:gap are fanned out nowhere and deleted from its
    stream (fault injected); publication 6 reveals the gap, the hole cannot be read back, so
    the subscriber gets resync (reason trimmed) with the state as of its offset, then the later
    publications live; workflow:calm on the same socket gets every publication."""
    require_redis()
    async with running_server(broker=REDIS_URL, broker_prefix=f"test-{secrets.token_hex(4)}",
                              channel_meta_ttl_s=600, workflow_history_ttl_s=600) as srv:
        hub = srv.server.channel_services.hub
        backend: Any = hub.backend
        async with raw(f"{srv.ws}/ws/workflow") as client:
            gap = await subscribe(client, "workflow:gap", 1)
            calm = await subscribe(client, "workflow:calm", 2)
            assert gap["offset"] == calm["offset"] == 0
            real = backend.fanout_channel
            for n in range(1, 8):
                lost = n in (3, 4, 5)
                if lost:
                    backend.fanout_channel = lambda channel: f"{real(channel)}:nowhere"
                try:
                    await captify_ws.publish("workflow:gap", "step", n, state_patch={"n": n})
                finally:
                    backend.fanout_channel = real
                if lost:
                    await backend.client.xdel(backend.key("workflow:gap", "s"), f"{n}-0")
                await captify_ws.publish("workflow:calm", "step", n)
            messages: list[dict[str, Any]] = []
            await collect(client, lambda got: got[-1].get("type") == "resync", messages)
            resync = messages[-1]
            # The repair runs while 7 is published: the resync is at 6 or 7, with the state
            # exactly as of that offset; what follows it is live.
            at = resync["offset"]
            assert at in (6, 7) and resync["state"] == {"n": at}, resync
            assert (resync["channel"], resync["reason"], resync["recovered"]) == \
                ("workflow:gap", "trimmed", False)
            assert resync["epoch"] == gap["epoch"]
            await captify_ws.publish("workflow:gap", "step", 8, state_patch={"n": 8})
            await captify_ws.publish("workflow:calm", "step", 8)
            await collect(client, lambda got: _has(got, "workflow:gap", 8)
                          and _has(got, "workflow:calm", 8), messages)
            kinds = [(m["type"], m.get("offset")) for m in messages
                     if m.get("channel") == "workflow:gap"]
            assert kinds == [("pub", 1), ("pub", 2), ("resync", at),
                             *[("pub", n) for n in range(at + 1, 9)]], kinds
            assert [m["data"] for m in pubs(messages) if m["channel"] == "workflow:calm"] == \
                list(range(1, 9))
            assert all(m.get("channel") in ("workflow:gap", "workflow:calm") for m in messages)
            assert hub.counters["resyncs"] == 1
            # The socket is still served: a new subscribe on it is answered.
            again = await subscribe(client, "workflow:after", 3)
            assert again["recovered"] is False and again["offset"] == 0


def _has(messages: list[dict[str, Any]], channel: str, offset: int) -> bool:
    return any(m.get("type") == "pub" and m["channel"] == channel and m["offset"] == offset
               for m in messages)


async def collect(client: JsonClient, done: Callable[[list[dict[str, Any]]], bool],
                  got: list[dict[str, Any]], timeout: float = 15.0) -> None:
    """Append what ``client`` receives to ``got`` until ``done(got)``."""
    deadline = time.monotonic() + timeout
    while not got or not done(got):
        try:
            got.append(await client.recv(max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            raise AssertionError(f"timed out; got {got}") from None
