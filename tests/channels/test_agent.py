"""/ws/agent run streams: coalesced tokens, one compacted snapshot for late joiners and
reloads, exactly one terminal event, cancel as the only stop, the producer watchdog, bad
input — on the memory backend and on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import captify_ws
from captify_ws.agents.events import event_of
from captify_ws.api import agent_runs, current_server
from tests.channels.support import SECRET, pubs, raw, subscribe, token, until
from tests.helpers import RunningServer, running_server
from tests.polling import stays
from tests.services import REDIS_URL, require_redis


@contextlib.asynccontextmanager
async def agent_server(backend: str = "memory", **overrides: Any) -> AsyncIterator[RunningServer]:
    if backend == "redis":
        require_redis()
        overrides.update(broker=REDIS_URL, broker_prefix=f"test-{secrets.token_hex(4)}")
    async with running_server(**overrides) as srv:
        yield srv


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _stored_events(run_id: str) -> list[str]:
    hub = current_server().channel_services.hub
    read = await hub.read(f"agent:{run_id}", 0, 100_000, partial=True)
    return [event_of(frame) for _, frame in read.publications]


async def test_tokens_are_coalesced_and_a_late_joiner_gets_one_snapshot(backend: str) -> None:
    """2,000 tokens reach a live subscriber as far fewer publications with the same text; a
    subscriber joining after them gets recovered:false with the text so far, then live."""
    async with agent_server(backend, agent_coalesce_tokens=32,
                            agent_coalesce_ms=50) as srv:
        async with raw(f"{srv.ws}/ws/agent") as live:
            await subscribe(live, "agent:r1")
            pieces = [f"w{i} " for i in range(2000)]
            async with captify_ws.agent_run("r1", owner="u1") as run:
                await run.message_started("m1")
                for piece in pieces:
                    await run.token("m1", piece)
                await run.flush()
                async with raw(f"{srv.ws}/ws/agent") as late:
                    answer = await subscribe(late, "agent:r1")
                    assert answer["recovered"] is False
                    state = answer["state"]
                    assert state["status"] == "running" and state["owner"] == "u1"
                    assert state["messages"] == [{"id": "m1", "role": "assistant",
                                                  "text": "".join(pieces),
                                                  "completed": False}]
                    await run.token("m1", "tail")
                    await run.message_completed("m1")
                    pub = await late.expect("pub", where=lambda m: m["event"] == "token")
                    assert pub["data"] == {"message_id": "m1", "delta": "tail"}
                    assert pub["offset"] == answer["offset"] + 1
            assert run.tokens == 2001
            assert run.publications <= 2001 / 32 + 10, run.publications
            text = ""
            while True:
                message = await live.expect("pub")
                if message["event"] == "token":
                    text += message["data"]["delta"]
                if message["event"] == "run.completed":
                    break
            assert text == "".join(pieces) + "tail"


async def test_exactly_one_terminal_event_is_stored(backend: str) -> None:
    """Concurrent cancels, completions and failures: one terminal event is stored, the
    rest answer RunEnded; tokens after it are refused and stored nowhere."""
    async with agent_server(backend) as srv:
        runs = agent_runs(srv.server)
        for attempt in range(5):
            run_id = f"race-{attempt}"
            await runs.publish(run_id, "run.started", {"owner": "u"})
            await runs.publish(run_id, "token", {"message_id": "m", "delta": "x"})
            results = await asyncio.gather(
                runs.cancel(run_id, "u"),
                runs.publish(run_id, "run.completed", {}),
                runs.publish(run_id, "run.failed", {"error": "boom"}),
                runs.cancel(run_id, "v"), return_exceptions=True)
            events = await _stored_events(run_id)
            terminal = [e for e in events if e in ("run.completed", "run.failed",
                                                    "run.cancelled")]
            assert len(terminal) == 1 and events[-1] == terminal[0], events
            assert sum(isinstance(r, captify_ws.RunEnded) for r in results) >= 1
            with pytest.raises(captify_ws.RunEnded) as caught:
                await runs.publish(run_id, "token", {"message_id": "m", "delta": "late"})
            assert caught.value.status == await runs.status(run_id)
            assert await _stored_events(run_id) == events


async def test_cancel_from_a_client_is_the_only_stop(backend: str) -> None:
    """Closing and reloading tabs never stops a run; a cancel from another client cancels the
    producer's task within 1 s and every subscriber ends at run.cancelled."""
    async with agent_server(backend) as srv:
        produced: list[int] = []
        cancelled_at: list[float] = []

        async def produce() -> None:
            async with captify_ws.agent_run("c1", owner="alice") as run:
                await run.message_started("m1")
                try:
                    for i in range(100_000):
                        await run.token("m1", f"{i} ")
                        produced.append(i)
                        await asyncio.sleep(0.002)
                except asyncio.CancelledError:
                    cancelled_at.append(time.monotonic())
                    raise

        task = asyncio.get_running_loop().create_task(produce())
        async with raw(f"{srv.ws}/ws/agent") as watcher:
            await subscribe(watcher, "agent:c1")
            for _ in range(3):  # tabs come and go
                async with raw(f"{srv.ws}/ws/agent") as tab:
                    await subscribe(tab, "agent:c1")
                    await tab.expect("pub")
            count = len(produced)
            await until(lambda: len(produced) > count + 20, "the run goes on after tabs left")
            async with raw(f"{srv.ws}/ws/agent") as other:
                await other.send({"type": "cancel", "id": 9, "channel": "agent:c1"})
                sent = time.monotonic()
                reply = await other.expect("reply")
                assert reply == {"type": "reply", "id": 9, "data": {"status": "cancelled"}}
            await asyncio.wait_for(task, 5)  # the block ended quietly
            assert cancelled_at and cancelled_at[0] - sent < 1.0
            end = await watcher.expect("pub", where=lambda m: m["event"] == "run.cancelled")
            assert end["data"]["by"] is None
            assert (await _stored_events("c1"))[-1] == "run.cancelled"
            async with raw(f"{srv.ws}/ws/agent") as again:
                answer = await subscribe(again, "agent:c1")
                assert answer["state"]["status"] == "cancelled"


async def test_on_cancel_callback_and_events_after_cancel_raise_run_ended() -> None:
    """With on_cancel the producer's code decides; its next event raises RunEnded, and the
    block ends quietly."""
    async with agent_server():
        heard = asyncio.Event()
        async with captify_ws.agent_run("cb", on_cancel=heard.set) as run:
            await run.token("m", "a")
            assert await captify_ws.cancel_run("cb", by="ops") == "cancelled"
            await asyncio.wait_for(heard.wait(), 1)
            with pytest.raises(captify_ws.RunEnded):
                await run.token("m", "b")
        assert (await _stored_events("cb"))[-1] == "run.cancelled"


async def test_a_reload_far_behind_gets_the_snapshot_not_the_tokens() -> None:
    """A tab back with a since more than agent_recovery_max_publications behind gets one
    compacted snapshot (too_far); a tab a few behind gets exactly what it missed."""
    async with agent_server(agent_recovery_max_publications=10,
                            agent_coalesce_tokens=1) as srv:
        async with captify_ws.agent_run("reload") as run:
            await run.tool_call("t1", "search", {"q": "x"})
            await run.tool_result("t1", ["a"])
            for i in range(50):
                await run.token("m1", str(i % 10))
            first = await captify_ws.channel_position("agent:reload")
            async with raw(f"{srv.ws}/ws/agent") as tab:
                answer = await subscribe(tab, "agent:reload",
                                         since={"offset": 3, "epoch": first.epoch})
                assert answer["recovered"] is False and answer["reason"] == "too_far"
                assert answer["state"]["messages"][0]["text"] == "0123456789" * 5
                assert answer["state"]["tool_calls"] == [
                    {"id": "t1", "name": "search", "args": {"q": "x"}, "result": ["a"],
                     "completed": True}]
                assert not pubs(await tab.quiet(0.2))
            async with raw(f"{srv.ws}/ws/agent") as tab:
                answer = await subscribe(tab, "agent:reload",
                                         since={"offset": first.offset - 4,
                                                "epoch": first.epoch})
                assert answer["recovered"] is True and answer["replay"] == 4


async def test_a_silent_producer_fails_the_run_after_its_ttl(backend: str) -> None:
    """A run whose producer stops publishing (no heartbeat) ends as run.failed
    {error: producer_lost} for every subscriber; a live producer's heartbeats keep its
    run alive past the TTL."""
    async with agent_server(backend, agent_producer_ttl_s=0.6) as srv:
        runs = agent_runs(srv.server)
        await runs.publish("dead", "run.started", {})
        async with raw(f"{srv.ws}/ws/agent") as tab, \
                captify_ws.agent_run("alive") as alive:
            await subscribe(tab, "agent:dead")
            await subscribe(tab, "agent:alive", ident=2)
            failed = await tab.expect("pub", timeout=5,
                                      where=lambda m: m["event"] == "run.failed")
            assert failed["channel"] == "agent:dead"
            assert failed["data"]["error"] == "producer_lost"
            async def alive_running() -> bool:
                return await runs.status("alive") == "running"

            # 2.5 TTLs of an idle producer: the run stays alive all along
            await stays(alive_running, "the idle producer's run", seconds=1.5, interval=0.05)
            await alive.token("m", "still here")


BAD_EVENTS: list[tuple[str, Any, int, str]] = [
    ("token", {"message_id": "m", "delta": "x" * 70}, 1009, "delta longer than 64"),
    ("token", {"message_id": "m"}, 4400, "'delta' must be a string"),
    ("made.up", {}, 4400, "unknown agent event"),
    ("tool_call", {"id": "t"}, 4400, "'name' must be"),
    ("token", "text", 4400, "data must be a JSON object"),
]


@pytest.mark.parametrize(("event", "data", "code", "text"), BAD_EVENTS)
async def test_bad_events_are_refused_with_a_clear_error(event: str, data: Any, code: int,
                                                         text: str) -> None:
    """Malformed events from any publisher: the error names the fault, nothing is stored,
    the run and its subscribers carry on."""
    async with agent_server(agent_delta_max_chars=64) as srv:
        runs = agent_runs(srv.server)
        await runs.publish("bad", "run.started", {})
        async with raw(f"{srv.ws}/ws/agent") as tab:
            await subscribe(tab, "agent:bad")
            with pytest.raises(captify_ws.ChannelError) as caught:
                await captify_ws.publish("agent:bad", event, data)
            assert caught.value.code == code and text in caught.value.message
            await runs.publish("bad", "token", {"message_id": "m", "delta": "ok"})
            assert (await tab.expect("pub"))["data"]["delta"] == "ok"
        assert await _stored_events("bad") == ["run.started", "token"]


async def test_cancel_needs_access_and_a_known_run() -> None:
    """A cancel from a reader (no write access) or a stranger is 4403, a writer's of an
    unknown run 4404; the owner may; the refused ones disturb nothing."""
    async with agent_server(auth="jwt", jwt_secret=SECRET, authorizer="jwt-claims") as srv:
        runs = agent_runs(srv.server)
        await runs.publish("owned", "run.started", {"owner": "alice"})
        reader = token("bob", docs={"agent:*": "read"})
        stranger = token("eve", docs={})
        async with raw(f"{srv.ws}/ws/agent?token={reader}") as bob, \
                raw(f"{srv.ws}/ws/agent?token={stranger}") as eve, \
                raw(f"{srv.ws}/ws/agent?token={token('alice')}") as alice:
            await subscribe(bob, "agent:owned")
            await subscribe(alice, "agent:owned")  # the owner needs no claim
            await eve.send({"type": "subscribe", "id": 1, "channel": "agent:owned"})
            assert (await eve.expect("error"))["code"] == 4403
            for client in (bob, eve):
                await client.send({"type": "cancel", "id": 2, "channel": "agent:owned"})
                error = await client.expect("error")
                assert error["code"] == 4403 and "cancel" in error["message"]
            async with raw(f"{srv.ws}/ws/agent?token="
                           f"{token('carol', docs={'agent:*': 'write'})}") as carol:
                await carol.send({"type": "cancel", "id": 3, "channel": "agent:nope"})
                error = await carol.expect("error")
                assert error["code"] == 4404 and "unknown run" in error["message"]
            assert await runs.status("owned") == "running"
            await alice.send({"type": "cancel", "id": 4, "channel": "agent:owned"})
            assert (await alice.expect("reply"))["data"] == {"status": "cancelled"}
            assert (await bob.expect("pub"))["event"] == "run.cancelled"


async def test_the_watchdog_reads_only_runs_it_heard_nothing_from() -> None:
    """A run that keeps publishing is never read by the watchdog; one silent for the TTL is,
    and once seen ended it is not read again."""
    async with agent_server(agent_producer_ttl_s=10.0) as srv:
        runs = agent_runs(srv.server)
        async with raw(f"{srv.ws}/ws/agent") as tab:
            await subscribe(tab, "agent:busy")
            await subscribe(tab, "agent:quiet", ident=2)
            await runs.publish("busy", "run.started", {})
            await runs.publish("quiet", "run.started", {})
            for _ in range(2):
                await tab.expect("pub", where=lambda m: m["event"] == "run.started")
            now = time.monotonic()
            assert await runs.watch_once(now) == []
            await runs.publish("busy", "token", {"message_id": "m", "delta": "x"})
            await tab.expect("pub", where=lambda m: m["event"] == "token")
            assert await runs.watch_once(now + 11) == ["agent:quiet"]  # alive: its ts is new
            await runs.publish("quiet", "run.completed", {})
            await tab.expect("pub", where=lambda m: m["event"] == "run.completed")
            assert await runs.watch_once(now + 12) == []  # both published within the TTL
            assert await runs.watch_once(now + 23) == ["agent:busy", "agent:quiet"]
            assert await runs.watch_once(now + 34) == ["agent:busy"]  # quiet: seen ended
            assert await runs.status("busy") == "running"  # its last event is recent


async def test_a_run_ended_through_the_generic_api_keeps_its_final_snapshot() -> None:
    """A run published with POST-/publish-style calls and ended there: the first snapshot that
    sees it ended keeps it in the store, and a subscriber after the stream expired still gets
    the text and status."""
    async with agent_server(agent_history_ttl_s=0.3) as srv:
        runs = agent_runs(srv.server)
        await captify_ws.publish("agent:generic", "run.started", {"owner": "u"})
        await captify_ws.publish("agent:generic", "token", {"message_id": "m", "delta": "kept"})
        await captify_ws.publish("agent:generic", "run.completed", {"result": 42})
        async with raw(f"{srv.ws}/ws/agent") as tab:
            await subscribe(tab, "agent:generic")
        await asyncio.sleep(0.5)  # bounded: past the 0.3 s history TTL
        runs._folds.clear()  # a fresh instance would have no fold cached
        async with raw(f"{srv.ws}/ws/agent") as late:
            state = (await subscribe(late, "agent:generic"))["state"]
        assert state["status"] == "completed" and state["result"] == 42
        assert state["messages"][0]["text"] == "kept" and "partial" not in state


async def test_metrics_count_tokens_publications_and_cancels() -> None:
    """/metrics: tokens and token publications of agent_run() (the coalescing factor) and
    cancels."""
    async with agent_server(api_key="k", agent_coalesce_tokens=10) as srv:
        async with captify_ws.agent_run("metered") as run:
            for _ in range(30):
                await run.token("m", "x")
            await captify_ws.cancel_run("metered")
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{srv.http}/metrics",
                                   headers={"Authorization": "Bearer k"})).text
        assert 'captify_agent_events_total{kind="tokens"} 30.0' in text
        assert 'captify_agent_events_total{kind="token_publications"} 3.0' in text
        assert 'captify_agent_events_total{kind="cancels"} 1.0' in text
        assert "captify_agent_sessions_open 0.0" in text
