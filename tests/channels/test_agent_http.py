"""Agent runs over HTTP (NDJSON producers in any language) and the Redis ingest; a producer
killed with SIGKILL ends its run as run.failed after the TTL."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from captify_ws.client import Publisher
from tests.channels.support import raw, subscribe
from tests.helpers import ROOT, running_server
from tests.services import REDIS_URL, require_redis

AUTH = {"Authorization": "Bearer k", "Content-Type": "application/x-ndjson"}


def line(event: str, **data: object) -> bytes:
    return json.dumps({"event": event, "data": data}).encode() + b"\n"


async def test_an_ndjson_stream_is_published_line_by_line() -> None:
    """Subscribers see tokens while the body is still being sent; a malformed line is
    reported with its number and the rest goes on; GET gives the compacted run."""
    async with running_server(api_key="k") as srv, raw(f"{srv.ws}/ws/agent") as tab, \
            httpx.AsyncClient(timeout=10) as http:
        await subscribe(tab, "agent:h1")
        seen = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield line("run.started", owner="u1") + line("message.started", message_id="m")
            yield line("token", message_id="m", delta="Hel")
            await asyncio.wait_for(seen.wait(), 5)  # the body is still open
            yield b'{"event": "token", "data": 5}\nnot json\n'
            yield line("token", message_id="m", delta="lo") + line("run.completed")

        async def watch() -> None:
            await tab.expect("pub", where=lambda m: m["event"] == "token")
            seen.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        answer = await http.post(f"{srv.http}/api/v1/agent/runs/h1/events", headers=AUTH,
                                 content=body())
        await watcher
        result = answer.json()
        assert answer.status_code == 200 and result["status"] == "completed"
        assert result["accepted"] == 5 and result["error_count"] == 2
        assert [(e["line"], e["code"]) for e in result["errors"]] == [(4, 4400), (5, 4400)]
        run = (await http.get(f"{srv.http}/api/v1/agent/runs/h1", headers=AUTH)).json()
        assert run["run"]["messages"][0]["text"] == "Hello"
        assert run["run"]["status"] == "completed" and run["offset"] == 5


async def test_a_cancel_reaches_an_http_producer_through_its_stream_and_a_poll() -> None:
    """A client's cancel mid-stream: the producer's POST answers 409 cancelled, the poll
    says cancelled, and lines after it are not stored."""
    async with running_server(api_key="k") as srv, raw(f"{srv.ws}/ws/agent") as tab, \
            httpx.AsyncClient(timeout=10) as http:
        await subscribe(tab, "agent:h2")
        cancelled = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield line("run.started") + line("token", message_id="m", delta="a")
            await asyncio.wait_for(cancelled.wait(), 5)
            yield line("token", message_id="m", delta="after the cancel")

        async def cancel() -> None:
            await tab.expect("pub", where=lambda m: m["event"] == "token")
            await tab.send({"type": "cancel", "id": 5, "channel": "agent:h2"})
            await tab.expect("reply")
            cancelled.set()

        canceller = asyncio.get_running_loop().create_task(cancel())
        answer = await http.post(f"{srv.http}/api/v1/agent/runs/h2/events", headers=AUTH,
                                 content=body())
        await canceller
        assert answer.status_code == 409 and answer.json()["status"] == "cancelled"
        poll = (await http.get(f"{srv.http}/api/v1/agent/runs/h2", headers=AUTH)).json()
        assert poll["run"]["status"] == "cancelled"
        assert poll["run"]["messages"][0]["text"] == "a"
        again = await http.post(f"{srv.http}/api/v1/agent/runs/h2/cancel", headers=AUTH)
        assert again.json() == {"status": "cancelled"}
        unknown = await http.post(f"{srv.http}/api/v1/agent/runs/nope/cancel", headers=AUTH)
        assert unknown.status_code == 404 and "unknown run" in unknown.json()["error"]


async def test_kill_9_of_an_http_producer_fails_the_run_after_the_ttl() -> None:
    """A producer process streaming NDJSON is killed with SIGKILL: subscribers get
    run.failed {error: producer_lost} within a few TTLs; the text so far stays."""
    async with running_server(api_key="k", agent_producer_ttl_s=0.8) as srv, \
            raw(f"{srv.ws}/ws/agent") as tab:
        await subscribe(tab, "agent:k9")
        producer = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "outside" / "ndjson_producer.py"), srv.http,
            "k", "k9", stdout=asyncio.subprocess.PIPE, env={**os.environ})
        try:
            assert producer.stdout is not None
            assert await asyncio.wait_for(producer.stdout.readline(), 20) == b"streaming\n"
            await tab.expect("pub", timeout=10, where=lambda m: m["event"] == "token")
        finally:
            producer.send_signal(signal.SIGKILL)
            await producer.wait()
        failed = await tab.expect("pub", timeout=8,
                                  where=lambda m: m["event"] == "run.failed")
        assert failed["data"]["error"] == "producer_lost"
        async with raw(f"{srv.ws}/ws/agent") as late:
            state = (await subscribe(late, "agent:k9"))["state"]
            assert state["status"] == "failed" and state["messages"][0]["text"].startswith("0 ")


async def test_the_redis_ingest_carries_agent_events_with_the_same_rules() -> None:
    """Producers that append to the Redis ingest stream get the same checks: tokens stream,
    a terminal event seals the run, a later token is answered sealed and never stored."""
    require_redis()
    prefix = f"test-{secrets.token_hex(4)}"
    async with running_server(api_key="k", broker=REDIS_URL, broker_prefix=prefix) as srv, \
            raw(f"{srv.ws}/ws/agent") as tab, \
            Publisher(REDIS_URL, prefix=prefix) as publisher:
        await subscribe(tab, "agent:ri")
        await publisher.publish("agent:ri", "run.started", {"owner": "u"})
        await publisher.publish("agent:ri", "token", {"message_id": "m", "delta": "hi"})
        done = await publisher.publish("agent:ri", "run.completed", {})
        late = await publisher.publish("agent:ri", "token", {"message_id": "m", "delta": "x"})
        assert late.sealed and late.offset == done.offset
        with pytest.raises(Exception, match="unknown agent event"):
            await publisher.publish("agent:ri", "bogus", {})
        events = [(await tab.expect("pub"))["event"] for _ in range(3)]
        assert events == ["run.started", "token", "run.completed"]
