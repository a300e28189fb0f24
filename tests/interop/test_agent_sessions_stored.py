"""The agent sessions' attribution list is stored: a real process restarted (SIGTERM and
kill -9, SQLite) lists the same sessions, and two instances on Redis + PostgreSQL list each
other's; an HTTP session's calls on the instance that did not start it are answered 421 with
the instance that holds it (session affinity), and nothing changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captify_ws.agents.registry import MAX_OPEN_PER_OWNER
from captify_ws.api import agent_sessions
from captify_ws.errors import ChannelError
from tests.helpers import ServerProcess, running_server
from tests.polling import eventually
from tests.services import REDIS_URL, fresh_database, require_redis

BASE = "/api/v1/agent/sessions"
AUTH = {"Authorization": "Bearer k"}


def serve(store: str, *extra: str) -> ServerProcess:
    return ServerProcess(["--port", "0", "--store", store, "--api-key", "k",
                          "--log-level", "warning", *extra]).start()


async def listed(http: httpx.AsyncClient, proc: ServerProcess, document_id: str
                 ) -> list[dict[str, Any]]:
    answer = await http.get(f"{proc.http}{BASE}?document_id={document_id}")
    assert answer.status_code == 200, answer.text
    agents: list[dict[str, Any]] = answer.json()["agents"]
    return agents


async def start(http: httpx.AsyncClient, proc: ServerProcess, **body: Any) -> dict[str, Any]:
    answer = await http.post(f"{proc.http}{BASE}", json=body)
    assert answer.status_code == 200, answer.text
    opened: dict[str, Any] = answer.json()
    return opened


async def test_the_list_survives_restarts_of_the_process(tmp_path: Path) -> None:
    """SQLite: one session ended (reverted), one left open when the process is killed with
    SIGKILL; after each restart both are listed with everything they had, the open one
    ended by the restart; a session that typed is listed after a SIGTERM restart too."""
    store = f"sqlite:///{tmp_path}/agents.db"
    proc = serve(store)
    try:
        async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
            first = await start(http, proc, document_id="notes", name="Writer",
                                color="#ff0000", owner="u-7", run_id="run-1")
            sid = first["session_id"]
            assert (await http.post(f"{proc.http}{BASE}/{sid}/insert",
                                    json={"anchor": 0, "text": "draft"})).status_code == 200
            assert (await http.post(f"{proc.http}{BASE}/{sid}/revert")).status_code == 200
            assert (await http.delete(f"{proc.http}{BASE}/{sid}")).json() == {"ended": True}
            second = await start(http, proc, document_id="notes", name="Checker")
            await http.post(f"{proc.http}{BASE}/{second['session_id']}/insert",
                            json={"anchor": 0, "text": "kept"})
            before = await listed(http, proc, "notes")
            assert [a["session_id"] for a in before] == [sid, second["session_id"]]
            assert before[1]["ended_at"] is None
            proc.kill9()
            proc = serve(store)
            after = await listed(http, proc, "notes")
            assert [a["session_id"] for a in after] == [sid, second["session_id"]]
            assert after[0] == before[0]
            assert after[0]["owner"] == "u-7" and after[0]["run_id"] == "run-1"
            assert after[0]["client_id"] == first["client_id"] and after[0]["reverted"]
            assert after[0]["name"] == "Writer" and after[0]["color"] == "#ff0000"
            assert after[0]["instance"] == first["instance"]
            assert after[1]["client_id"] == second["client_id"]
            assert after[1]["ended_at"] is not None and after[1]["ended_at"] >= \
                after[1]["started_at"]
            third = await start(http, proc, document_id="notes", name="Third")
            await http.post(f"{proc.http}{BASE}/{third['session_id']}/insert",
                            json={"anchor": 0, "text": "more "})
            proc.stop()
            proc = serve(store)
            last = await listed(http, proc, "notes")
            assert [a["session_id"] for a in last] == [sid, second["session_id"],
                                                       third["session_id"]]
            assert last[2]["ended_at"] is not None  # ended by the SIGTERM stop
            assert last[2]["before_version"] is not None  # the text was there before it
            assert await listed(http, proc, "other") == []
    finally:
        proc.stop()


async def test_two_instances_list_the_same_and_answer_421_for_the_other_ones() -> None:
    """Redis + PostgreSQL: a session started on A is listed by B; B answers its calls 421
    naming A (nothing inserted), A serves them; ended on A, B lists it ended; a session open
    when A is killed is ended by B once A left the cluster."""
    require_redis()
    with fresh_database() as url:
        cluster = ["--broker", REDIS_URL, "--broker-prefix", f"agents-{time.time_ns()}",
                   "--cluster-heartbeat-s", "0.5"]
        a, b = serve(url, *cluster), serve(url, *cluster)
        try:
            async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
                opened = await start(http, a, document_id="shared", name="Bot", owner="u-1")
                sid = opened["session_id"]
                on_b = await listed(http, b, "shared")
                assert [x["session_id"] for x in on_b] == [sid]
                assert on_b[0]["instance"] == opened["instance"] and on_b[0]["owner"] == "u-1"
                deadline = time.monotonic() + 10
                while True:  # B has heard A's heartbeat: A is alive
                    answer = await http.post(f"{b.http}{BASE}/{sid}/insert",
                                             json={"anchor": 0, "text": "x"})
                    assert answer.status_code == 421, answer.text
                    body = answer.json()
                    assert body["instance"] == opened["instance"]
                    assert body["session_id"] == sid
                    if body["instance_alive"]:
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                for method, path in [("GET", "/text"), ("POST", "/revert"), ("DELETE", "")]:
                    answer = await http.request(method, f"{b.http}{BASE}/{sid}{path}")
                    assert answer.status_code == 421, (path, answer.text)
                assert (await http.post(f"{a.http}{BASE}/{sid}/insert",
                                        json={"anchor": 0, "text": "hi"})).json() == \
                    {"inserted": 2, "length": 2}
                assert (await http.delete(f"{a.http}{BASE}/{sid}")).json() == {"ended": True}
                ended = await listed(http, b, "shared")
                assert ended[0]["ended_at"] is not None
                gone = await http.post(f"{b.http}{BASE}/{sid}/insert",
                                       json={"anchor": 0, "text": "x"})
                assert gone.status_code == 404 and "unknown agent session" in gone.text
                # A killed with a session open: B stops pointing at A once A left the cluster
                orphan = (await start(http, a, document_id="shared", name="Orphan"))
                a.kill9()
                deadline = time.monotonic() + 15
                while True:
                    answer = await http.get(f"{b.http}{BASE}/{orphan['session_id']}/text")
                    if answer.status_code == 404:
                        break
                    assert answer.status_code == 421, answer.text
                    assert time.monotonic() < deadline, "B never saw A leave"
                    await asyncio.sleep(0.2)
                assert "left the cluster" in answer.text
                assert (await listed(http, b, "shared"))[1]["ended_at"] is not None
        finally:
            a.stop()
            b.stop()


@pytest.fixture
async def small() -> AsyncIterator[Any]:
    async with running_server(api_key="k", max_document_size=4096) as srv:
        yield srv


async def test_bodies_and_sessions_per_owner_are_bounded(small: Any) -> None:
    """Text past the document quota, an NDJSON stream past max_document_size (empty pieces)
    and a JSON body past 8 MiB are refused with 413, the text before the quota kept; one
    owner gets at most MAX_OPEN_PER_OWNER open sessions (429), others still get theirs."""
    async with httpx.AsyncClient(timeout=30, headers=AUTH) as http:
        base = f"{small.http}{BASE}"
        sid = (await http.post(base, json={"document_id": "b"})).json()["session_id"]

        async def stream(line: bytes) -> AsyncIterator[bytes]:
            yield b'{"anchor": 0}\n'
            for _ in range(400):
                yield line
        ndjson = {"content-type": "application/x-ndjson"}
        answer = await http.post(f"{base}/{sid}/insert", content=stream(b'{"text": ""}\n'),
                                 headers=ndjson)
        assert answer.status_code == 413 and "a body longer than 4096" in answer.text
        answer = await http.post(f"{base}/{sid}/insert", headers=ndjson,
                                 content=stream(b'{"text": "' + b"y" * 100 + b'"}\n'))
        assert answer.status_code == 413 and answer.json()["code"] == "quota_exceeded"
        text = (await http.get(f"{base}/{sid}/text")).json()["text"]
        assert 1000 < len(text) < 4096 and set(text) == {"y"}
        big = await http.post(f"{base}/{sid}/insert", content=b" " * (9 << 20))
        assert big.status_code == 413, big.text
    sessions = agent_sessions(small.server)
    for _ in range(MAX_OPEN_PER_OWNER):
        await sessions.start_session("b", name="n", color="#000", owner="greedy")
    with pytest.raises(ChannelError) as refused:
        await sessions.start_session("b", name="n", color="#000", owner="greedy")
    assert refused.value.code == 4429
    await sessions.start_session("b", name="n", color="#000", owner="modest")


async def test_ended_session_records_are_deleted_after_history_log_keep_s() -> None:
    """A record is kept while its session is open and for history_log_keep_s after it
    ended, then pruned; the open one stays."""
    async with running_server(history_log_keep_s=2.0) as srv:
        sessions = agent_sessions(srv.server)
        done = await sessions.start_session("p", name="Done", color="#000")
        await sessions.end(done.info.session_id)
        live = await sessions.start_session("p", name="Live", color="#000")
        assert await sessions.prune() == 0
        async def pruned() -> bool:
            return await sessions.prune() > 0

        await eventually(pruned, "the ended session to be pruned", interval=0.1)
        assert [a["name"] for a in await sessions.list("p")] == ["Live"]
        await sessions.end(live.info.session_id)
