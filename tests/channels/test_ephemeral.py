"""Ephemeral publications across instances on Redis: published on one instance (HTTP), they
reach live subscribers on another without an offset, take no offset from the stream, and are
never replayed."""

from __future__ import annotations

import contextlib
import secrets

import httpx

from tests.channels.support import pubs, raw, subscribe
from tests.helpers import running_server
from tests.services import REDIS_URL, require_redis


async def test_ephemeral_across_instances_is_live_only() -> None:
    """Progress ticks published on A reach B's subscriber in order with no offset; the durable
    publications around them get offsets 1 and 2 (ticks take none); a subscriber recovering
    from offset 0 on A gets the two durable ones only."""
    require_redis()
    settings = {"broker": REDIS_URL, "broker_prefix": f"test-{secrets.token_hex(4)}",
                "channel_meta_ttl_s": 600, "workflow_history_ttl_s": 600, "api_key": "k"}
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_server(**settings))
        b = await stack.enter_async_context(running_server(**settings))
        http = await stack.enter_async_context(httpx.AsyncClient(
            base_url=a.http, headers={"Authorization": "Bearer k"}, timeout=5))
        live = await stack.enter_async_context(raw(f"{b.ws}/ws/workflow"))
        first = await subscribe(live, "workflow:ticks")

        async def publish(event: str, data: object, ephemeral: bool = False) -> dict[str, object]:
            answer = await http.post("/api/v1/publish", json={
                "channel": "workflow:ticks", "event": event, "data": data,
                "ephemeral": ephemeral})
            assert answer.status_code == 200, answer.text
            result: dict[str, object] = answer.json()
            return result

        assert (await publish("run.status", "started"))["offset"] == 1
        for pct in (10, 50, 90):
            assert await publish("progress", pct, ephemeral=True) == {
                "offset": None, "epoch": None, "ephemeral": True}
        assert (await publish("run.status", "done"))["offset"] == 2
        got = []
        while len(got) < 5:
            got.append(await live.expect("pub"))
        assert [(m.get("offset"), m["data"]) for m in got] == [
            (1, "started"), (None, 10), (None, 50), (None, 90), (2, "done")]
        assert all(m.get("ephemeral") is True for m in got if "offset" not in m)

        late = await stack.enter_async_context(raw(f"{a.ws}/ws/workflow"))
        back = await subscribe(late, "workflow:ticks",
                               since={"offset": 0, "epoch": first["epoch"]})
        assert back["recovered"] and back["replay"] == 2
        replayed = pubs(await late.quiet(0.5))
        assert [(m["offset"], m["data"]) for m in replayed] == [(1, "started"), (2, "done")]
