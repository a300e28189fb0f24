"""Agent runs across instances sharing Redis: a cancel sent to one instance stops the producer
running on another within 1 s, and a run whose producer's instance died is failed by the
instance its subscribers are on."""

from __future__ import annotations

import asyncio
import secrets
import time

from captify_ws.agents.events import TERMINAL, event_of
from captify_ws.agents.producer import AgentRun
from captify_ws.api import agent_runs
from tests.channels.support import raw, subscribe
from tests.helpers import running_server
from tests.services import REDIS_URL, require_redis


async def test_a_cancel_on_one_instance_stops_the_producer_on_another() -> None:
    """Producer on A, tabs on B: B's cancel reaches A's task within 1 s; both instances'
    subscribers end at run.cancelled, stored once."""
    require_redis()
    shared = {"broker": REDIS_URL, "broker_prefix": f"test-{secrets.token_hex(4)}"}
    async with running_server(**shared) as a, running_server(**shared) as b:
        stopped: list[float] = []

        async def produce() -> None:
            async with AgentRun(agent_runs(a.server), "x-run", owner=None) as run:
                try:
                    for i in range(100_000):
                        await run.token("m", f"{i} ")
                        await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    stopped.append(time.monotonic())
                    raise

        task = asyncio.get_running_loop().create_task(produce())
        async with raw(f"{a.ws}/ws/agent") as on_a, raw(f"{b.ws}/ws/agent") as on_b:
            await subscribe(on_a, "agent:x-run")
            await subscribe(on_b, "agent:x-run")
            await on_b.expect("pub", where=lambda m: m["event"] == "token")
            await on_b.send({"type": "cancel", "id": 7, "channel": "agent:x-run"})
            asked = time.monotonic()
            assert (await on_b.expect("reply"))["data"] == {"status": "cancelled"}
            await asyncio.wait_for(task, 5)
            assert stopped and stopped[0] - asked < 1.0
            for tab in (on_a, on_b):
                await tab.expect("pub", where=lambda m: m["event"] == "run.cancelled")
        read = await b.server.channel_services.hub.read("agent:x-run", 0, 100_000,
                                                        partial=True)
        ends = [event_of(f) for _, f in read.publications if event_of(f) in TERMINAL]
        assert ends == ["run.cancelled"]


async def test_the_instance_of_the_subscribers_fails_a_run_whose_producer_instance_died(
        ) -> None:
    """A's producer goes silent (its instance stopped without ending the run): B, where the
    tabs are, publishes run.failed after the TTL."""
    require_redis()
    shared = {"broker": REDIS_URL, "broker_prefix": f"test-{secrets.token_hex(4)}",
              "agent_producer_ttl_s": 0.8}
    async with running_server(**shared) as b:
        async with running_server(**shared) as a:
            await agent_runs(a.server).publish("orphan", "run.started", {})
            await agent_runs(a.server).publish("orphan", "token",
                                               {"message_id": "m", "delta": "half"})
        async with raw(f"{b.ws}/ws/agent") as tab:
            answer = await subscribe(tab, "agent:orphan")
            assert answer["state"]["messages"][0]["text"] == "half"
            failed = await tab.expect("pub", timeout=8,
                                      where=lambda m: m["event"] == "run.failed")
            assert failed["data"]["error"] == "producer_lost"
