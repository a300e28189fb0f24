"""``--workers``: a WebSocket that names its document is served by the document's worker
(transport/handoff.py), observed from outside: Redis's subscriber count of each document's
channel, the workers' /metrics, and converged documents."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from tests.helpers import JsonClient, ServerProcess
from tests.polling import eventually, eventually_sync
from tests.services import REDIS_URL, free_port, require_redis

HANDOFFS = re.compile(r'^captify_worker_handoffs_total\{outcome="(\w+)"\} (\S+)$', re.M)


@pytest.fixture
def workers(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[tuple[ServerProcess,
                                                                                  str]]:
    """``captify-ws serve --workers 2`` on one SQLite file and the machine's Redis, with the
    test's extra flags (``request.param``); yields the process and its broker prefix."""
    require_redis()
    prefix = f"test-aff-{secrets.token_hex(4)}"
    proc = ServerProcess(["--port", str(free_port()), "--workers", "2", "--store",
                          f"sqlite:///{tmp_path}/workers.db", "--broker", REDIS_URL,
                          "--broker-prefix", prefix, "--api-key", "k",
                          *getattr(request, "param", [])]).start()
    try:
        # both workers listening (the first line is one worker's): else the kernel gives every
        # connection to the first
        eventually_sync(lambda: proc.log.count("listening on") >= 2, "the second worker",
                        timeout=20)
        yield proc, prefix
    finally:
        status = proc.stop()
        assert status == 0, proc.log


def _subscribers(prefix: str, documents: list[str]) -> list[int]:
    """How many workers subscribe to each document's broker channel (one per worker serving
    it)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [int(count) for _, count in client.pubsub_numsub(
            *[f"{prefix}:doc:{document}" for document in documents])]
    finally:
        client.close()


def _handoffs(proc: ServerProcess) -> dict[str, dict[str, float]]:
    """Each worker's ``captify_worker_handoffs_total`` by outcome, by instance id (/metrics is
    answered by whichever worker the kernel picks: asked until both answered)."""
    seen: dict[str, dict[str, float]] = {}

    def both() -> bool:
        response = httpx.get(f"{proc.http}/metrics", timeout=5, headers={
            "Authorization": "Bearer k", "Connection": "close"})
        seen[response.headers["x-captify-instance"]] = {
            outcome: float(value) for outcome, value in HANDOFFS.findall(response.text)}
        return len(seen) == 2

    eventually_sync(both, "both workers' /metrics", timeout=20)
    return seen


async def _json(proc: ServerProcess, document: str, client: str) -> JsonClient:
    return await JsonClient.open(proc.ws, document, client)


async def _converge(clients: list[JsonClient], marks: list[str]) -> None:
    for client in clients:
        async def has_all(client: JsonClient = client) -> bool:
            await client.sync()
            return all(mark in str(client.text) for mark in marks)

        await eventually(has_all, f"every edit in {client.document_id}", timeout=15)


def test_each_document_is_served_by_one_worker(
        workers: tuple[ServerProcess, str]) -> None:
    """Documents named in the path (y-websocket) or the query (JSON): every one of their
    connections ends on one worker, whichever worker the kernel gave it, and edits arrive."""
    proc, prefix = workers
    documents = [f"aff-{index}-é" if index % 3 == 0 else f"aff-{index}" for index in range(12)]

    async def scenario() -> None:
        from websockets.asyncio.client import connect

        readers = [await connect(f"{proc.ws}/ws/fabric/{quote(document)}")
                   for document in documents]
        clients = [await _json(proc, document, f"{side}{index}")
                   for index, document in enumerate(documents) for side in "ab"]
        for reader in readers:  # served: the y-websocket sync step 1 came
            assert (await asyncio.wait_for(reader.recv(), 5))[:2] == b"\x00\x00"
        for client in clients:
            await client.edit(f"<{client.ws.id}>")
        for index in range(len(documents)):
            pair = clients[2 * index:2 * index + 2]
            await _converge(pair, [f"<{client.ws.id}>" for client in pair])
        assert _subscribers(prefix, documents) == [1] * len(documents)
        for connection in [*readers, *(client.ws for client in clients)]:
            await connection.close()

    asyncio.run(scenario())
    counts = _handoffs(proc)
    sent = sum(worker.get("sent", 0) for worker in counts.values())
    received = sum(worker.get("received", 0) for worker in counts.values())
    # 36 connections: the kernel put some on the other worker than their document's
    assert 0 < sent == received < 36, counts


@pytest.mark.parametrize("workers", [["--worker-affinity-limit", "3"]], indirect=True)
def test_a_crowded_document_spreads_over_the_workers(
        workers: tuple[ServerProcess, str]) -> None:
    """Past ``worker_affinity_limit`` connections of one document on its worker, more stay on
    the worker that accepted them; the document is then served by both and its edits cross."""
    proc, prefix = workers

    async def scenario() -> None:
        clients: list[JsonClient] = []
        while _subscribers(prefix, ["crowded"]) != [2]:
            assert len(clients) < 40, "40 clients of one document, all on one worker"
            clients.append(await _json(proc, "crowded", f"c{len(clients)}"))
        for client in clients:
            await client.edit(f"<{client.ws.id}>")
        await _converge(clients, [f"<{client.ws.id}>" for client in clients])
        for client in clients:
            await client.ws.close()

    asyncio.run(scenario())
    counts = _handoffs(proc)
    assert sum(worker.get("returned", 0) for worker in counts.values()) > 0, counts


@pytest.mark.parametrize("workers", [["--worker-affinity-limit", "0"]], indirect=True)
def test_affinity_off(workers: tuple[ServerProcess, str]) -> None:
    """``--worker-affinity-limit 0``: connections stay where the kernel put them."""
    proc, prefix = workers
    documents = [f"off-{index}" for index in range(16)]

    async def scenario() -> list[int]:
        clients = [await _json(proc, document, side)
                   for document in documents for side in "ab"]
        for client in clients:
            await client.edit(f"<{client.ws.id}>")
        await _converge(clients[:2], [f"<{client.ws.id}>" for client in clients[:2]])
        subscribers = _subscribers(prefix, documents)
        for client in clients:
            await client.ws.close()
        return subscribers

    # 16 documents with two clients each on two workers: some are split (1 in 2**15 not)
    assert 2 in asyncio.run(scenario())
    assert all(not worker for worker in _handoffs(proc).values())


def test_connections_for_a_killed_worker_wait_for_its_restart(
        workers: tuple[ServerProcess, str]) -> None:
    """A worker killed (SIGKILL: it cannot say it stopped) is started again by the supervisor;
    connections for its documents accepted meanwhile by the other worker are served by the new
    one, none lost."""
    proc, _ = workers
    assert proc.process is not None
    # the supervisor treats a death in its first 5 s as a failed start: past that (it started
    # before now, when both workers listen already)
    both_listening = time.monotonic()
    eventually_sync(lambda: time.monotonic() - both_listening > 5.5, "5 s of uptime",
                    timeout=10)
    victim = int(subprocess.run(["pgrep", "-P", str(proc.process.pid)], capture_output=True,
                                text=True, check=True).stdout.split()[1])
    os.kill(victim, signal.SIGKILL)
    eventually_sync(lambda: proc.log.count("starting it again") == 1, "the restart", timeout=10)

    async def scenario() -> None:
        from websockets.asyncio.client import connect

        readers = await asyncio.gather(*(
            connect(f"{proc.ws}/ws/fabric/restart-{index}", open_timeout=30)
            for index in range(20)))
        for reader in readers:
            assert (await asyncio.wait_for(reader.recv(), 30))[:2] == b"\x00\x00"
            await reader.close()

    asyncio.run(scenario())
    eventually_sync(lambda: proc.log.count("listening on") >= 3, "the new worker", timeout=20)


def test_clients_that_leave_while_being_moved_leave_nothing_behind(
        workers: tuple[ServerProcess, str]) -> None:
    """Raw sockets send an upgrade head (and some a garbage frame after it) and close at once,
    many of them while their socket travels to the other worker: no error in either worker's
    log, no connection left counted, and a client after them is served."""
    proc, _ = workers
    head = ("GET /ws/fabric/gone-{n} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n")

    async def scenario() -> None:
        from websockets.asyncio.client import connect

        for n in range(120):
            _, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(head.format(n=n).encode() + (b"\x81\xff" * (n % 3)))
            writer.close()
        reader = await connect(f"{proc.ws}/ws/fabric/gone-0")
        assert (await asyncio.wait_for(reader.recv(), 5))[:2] == b"\x00\x00"
        await reader.close()

    asyncio.run(scenario())

    def none_left() -> bool:
        seen: dict[str, str] = {}
        while len(seen) < 2:
            response = httpx.get(f"{proc.http}/metrics", timeout=5, headers={
                "Authorization": "Bearer k", "Connection": "close"})
            seen[response.headers["x-captify-instance"]] = response.text
        return all('captify_connections{handler="fabric"} 0.0' in text
                   for text in seen.values())

    eventually_sync(none_left, "no fabric connection left on either worker", timeout=15)
    assert "Traceback" not in proc.log and "ERROR" not in proc.log, proc.log
    assert sum(worker.get("sent", 0) for worker in _handoffs(proc).values()) > 0
