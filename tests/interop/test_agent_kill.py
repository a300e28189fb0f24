"""kill -9 of an agent producer that streams a run and types into a document over HTTP: the
run ends as run.failed (its TTL), the agent's presence disappears for the people in the
document (a TTL, not a ghost), and what it typed stays."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from tests.channels.support import raw, subscribe
from tests.helpers import ROOT, providers, running_server
from tests.polling import eventually


async def test_kill_9_of_an_http_agent_fails_its_run_and_removes_its_presence() -> None:
    """SIGKILL mid-stream: run.failed {producer_lost} and the awareness removal arrive within
    a few TTLs (1 s here); the document keeps the agent's text, everyone converges."""
    async with running_server(api_key="k", agent_producer_ttl_s=1.0) as srv, \
            providers() as repl, raw(f"{srv.ws}/ws/agent") as tab:
        await repl.call("open", name="p", url=f"{srv.ws}/ws/fabric", doc="kill-doc")
        await repl.call("waitSynced", name="p")
        await subscribe(tab, "agent:kill-run")
        producer = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "outside" / "agent_producer.py"), srv.http,
            "k", "kill-run", "kill-doc", stdout=asyncio.subprocess.PIPE, env={**os.environ})
        try:
            assert producer.stdout is not None
            client_id = int(await asyncio.wait_for(producer.stdout.readline(), 20))
            assert await asyncio.wait_for(producer.stdout.readline(), 20) == b"streaming\n"
            await repl.call("waitUntil", name="p", field="text", contains="[3]")
        finally:
            producer.send_signal(signal.SIGKILL)
            await producer.wait()
        failed = await tab.expect("pub", timeout=10, where=lambda m: m["event"] == "run.failed")
        assert failed["data"]["error"] == "producer_lost"
        async def removal_seen() -> list[dict[str, Any]] | None:
            seen = (await repl.call("awarenessSeen", name="p"))["seen"]
            return seen if any(s["id"] == client_id and s.get("removed") for s in seen) else None

        seen = await eventually(removal_seen, "the dead agent's presence to go", interval=0.05)
        assert any(s["id"] == client_id and s.get("name") == "Remote agent" for s in seen)
        text = (await repl.call("snapshot", name="p"))["text"]
        assert text.startswith("[0][1][2][3]")
