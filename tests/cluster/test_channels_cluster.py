"""Channels across real processes on Redis: a worker killed mid-stream, Redis restarted
mid-stream, the durable ingest (the README's redis-cli example), Publisher, is_online."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captify_ws.client import ChannelClient, Publisher
from tests.channels.support import SECRET, token, until
from tests.helpers import ROOT, ServerProcess, running_server
from tests.services import REDIS_URL, free_port, private_redis, require_redis

AUTH = {"Authorization": "Bearer k"}


class Recorder:
    """A ChannelClient on one channel, recording what it delivers and its resets."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = ChannelClient(url, min_delay_s=0.02, max_delay_s=0.3)
        self.sub = self.client.subscribe(channel)
        self.events: list[tuple[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.start()
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.client.publications():
            if event["type"] == "pub":
                self.events.append(("pub", (event["offset"], event["data"])))
            elif event["type"] == "state":
                self.events.append(("state", (event["reason"], event["state"])))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.stop()

    @property
    def delivered(self) -> list[tuple[int, Any]]:
        return [value for kind, value in self.events if kind == "pub"]

    def recorded(self, data: Any) -> bool:
        """Whether the last event this recorder took from the client is the publication of
        ``data`` (or a state whose ``n`` is ``data``). The client's own position moves before
        its events are consumed: waiting for that and then reading ``events`` raced."""
        if not self.events:
            return False
        kind, value = self.events[-1]
        return value[1] == data if kind == "pub" else (value[1] or {}).get("n") == data


@contextlib.asynccontextmanager
async def recorders(urls: list[str], channel: str) -> AsyncIterator[list[Recorder]]:
    made = [Recorder(url, channel) for url in urls]
    for recorder in made:
        await recorder.start()
    try:
        for recorder in made:
            await until(lambda r=recorder: r.sub.status == "live", "subscribed")
        yield made
    finally:
        for recorder in made:
            await recorder.stop()


async def publish_retrying(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
    """POST /api/v1/publish until it answers 200 (same idempotency key every time)."""
    failures: list[str] = []
    for _ in range(400):
        try:
            answer = await http.post(f"{url}/api/v1/publish", json=body, headers=AUTH)
            if answer.status_code == 200:
                return answer.json()
            assert answer.status_code == 503, answer.text
            failures.append(answer.text)
        except httpx.TransportError as exc:
            failures.append(repr(exc))
        await asyncio.sleep(0.025)
    raise AssertionError(f"could not publish {body}: {failures[-5:]}")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(part) for part in text.split()]


def _worker_of(workers: list[int], server_port: int, client_port: int) -> int | None:
    """The worker process holding the server side of a loopback TCP connection (from
    /proc/net/tcp and the workers' file descriptors), or None."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name == f"socket:[{inode}]":
                        return pid
    return None


async def test_kill9_of_a_worker_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """--workers 2 on Redis, 20 subscribers spread over both; kill -9 the worker holding most
    of them after 300 of 1,000 publications: its subscribers reconnect (to the other, or to
    its replacement) and every subscriber has offsets 1..1000 exactly once, in order."""
    require_redis()
    port = free_port()
    proc = ServerProcess([
        "--port", str(port), "--workers", "2", "--store", f"sqlite:///{tmp_path}/w.db",
        "--broker", REDIS_URL, "--broker-prefix", f"test-{secrets.token_hex(4)}",
        "--api-key", "k", "--channel-meta-ttl-s", "600", "--workflow-history-ttl-s", "600",
        "--channel-position-check-s", "1"]).start()
    try:
        assert proc.process is not None
        supervisor = proc.process.pid
        # start() returns at the first worker's start line. Subscribing before the second
        # one is ready put every subscriber on the first (or in the second's backlog), and
        # killing "the first child" then often killed a worker nobody was connected to.
        await until(lambda: proc.listening_lines() == 2, "both workers listening", timeout=30)
        workers = _children(supervisor)
        assert len(workers) == 2
        # The supervisor treats a worker dying in its first 5 s as a failed start (and
        # stops): both printed their start line after it started its clock.
        started = time.monotonic()
        url = f"ws://127.0.0.1:{port}/ws/workflow"
        async with recorders([url] * 20, "workflow:kill") as subs, \
                httpx.AsyncClient(timeout=5) as http:
            holders: dict[Recorder, int] = {}
            for sub in subs:
                assert sub.client.ws is not None
                holder = _worker_of(workers, port, sub.client.ws.local_address[1])
                assert holder is not None, "a subscriber's connection has a worker"
                holders[sub] = holder
            victim = max(workers, key=list(holders.values()).count)
            on_victim = [sub for sub in subs if holders[sub] == victim]
            base = f"http://127.0.0.1:{port}"
            for i in range(1, 1001):
                if i == 300:
                    while time.monotonic() - started < 5.5:
                        await asyncio.sleep(0.1)
                    subprocess.run(["kill", "-9", str(victim)], check=True)
                await publish_retrying(http, base, {
                    "channel": "workflow:kill", "event": "tick", "data": i,
                    "idempotency_key": f"tick-{i}"})
            for sub in subs:
                await until(lambda s=sub: s.recorded(1000), "every subscriber at 1000",
                            timeout=30)
            for sub in subs:
                assert sub.delivered == [(i, i) for i in range(1, 1001)]
                assert [kind for kind, _ in sub.events].count("state") == 1  # the first only
            assert on_victim and all(sub.client.connects > 1 for sub in on_victim)
    finally:
        proc.stop()


async def test_redis_restart_mid_stream_tells_epoch_and_gives_the_state(
        tmp_path: Path) -> None:
    """Two instances on a private Redis; it restarts (empty) mid-stream: every subscriber is
    told (reason epoch), gets the state kept in the store, and continues to the end."""
    with private_redis() as redis:
        store = f"sqlite:///{tmp_path}/r.db"
        procs = [ServerProcess(["--port", "0", "--store", store, "--broker", redis.url,
                                "--api-key", "k", "--channel-position-check-s", "1"]).start()
                 for _ in range(2)]
        try:
            urls = [f"{procs[i % 2].ws}/ws/workflow" for i in range(4)]
            async with recorders(urls, "workflow:restart") as subs, \
                    httpx.AsyncClient(timeout=5) as http:
                for i in range(1, 301):
                    if i == 120:
                        redis.stop()
                        await asyncio.sleep(0.3)
                        redis.start()
                    await publish_retrying(http, procs[i % 2].http, {
                        "channel": "workflow:restart", "event": "step", "data": i,
                        "state_patch": {"n": i}})
                for sub in subs:
                    await until(lambda s=sub: s.recorded(300), "every subscriber at n=300",
                                timeout=30)
        finally:
            for proc in procs:
                proc.stop()
        for sub in subs:
            assert ("state", "epoch") in [(kind, value[0]) for kind, value in sub.events]
            expected = 1
            for kind, value in sub.events:
                if kind == "state":
                    expected = (value[1] or {}).get("n", 0) + 1
                else:
                    assert value[1] == expected, (sub.events, value)
                    expected += 1
            assert expected == 301


def _readme_ingest_command() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^redis-cli XADD captify:ingest .*?[^\\]$", readme, re.M | re.S)
    assert match, "the README shows the redis-cli ingest example"
    return shlex.split(match.group(0).replace("\\\n", " "))


async def test_readme_redis_cli_ingest_example_and_publisher() -> None:
    """The README's redis-cli XADD, run as written (on a private Redis), is published once;
    Publisher from another process gets positions, retries are not published twice, and a
    bad entry goes to the dead-letter stream with the reason."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is not installed")
    with private_redis() as redis:
        async with running_server(broker=redis.url, channel_ingest_claim_idle_s=1) as srv, \
                recorders([f"{srv.ws}/ws/workflow"], "workflow:run-7") as (sub,):
            command = _readme_ingest_command()
            subprocess.run([command[0], "-p", str(redis.port), *command[1:]], check=True,
                           capture_output=True)
            subprocess.run([command[0], "-p", str(redis.port), *command[1:]], check=True,
                           capture_output=True)  # a retry: deduplicated by its ik
            await until(lambda: sub.sub.offset == 1, "the ingested publication")
            assert sub.sub.state == {"ocr": "done"}
            async with Publisher(redis.url) as publisher:
                position = await publisher.publish("workflow:run-7", "run.status",
                                                   {"status": "done"},
                                                   state_patch={"status": "done"},
                                                   idempotency_key="run-7:done")
                again = await publisher.publish("workflow:run-7", "run.status",
                                                {"status": "done"},
                                                idempotency_key="run-7:done")
                assert (position.offset, again.offset, again.duplicate) == (2, 2, True)
                with pytest.raises(Exception, match="unknown channel class"):
                    await publisher.publish("nope:x", "e", 1)
            await until(lambda: sub.recorded({"status": "done"}), "the Publisher's publication")
            assert sub.delivered[1] == (2, {"status": "done"}) and len(sub.delivered) == 2
            dead = subprocess.run(["redis-cli", "-p", str(redis.port), "XRANGE",
                                   "captify:ingest:dead", "-", "+"], check=True,
                                  capture_output=True, text=True).stdout
            assert "unknown channel class" in dead


async def test_is_online_counts_every_instance() -> None:
    """A user's notifications connection on instance B makes is_online true on A; closing it
    makes it false again."""
    require_redis()
    prefix = f"test-{secrets.token_hex(4)}"
    args = ["--port", "0", "--store", "memory", "--broker", REDIS_URL, "--broker-prefix",
            prefix, "--api-key", "k", "--auth", "jwt", "--jwt-secret", SECRET]
    a, b = ServerProcess(args).start(), ServerProcess(args).start()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def online() -> bool:
                got = await http.get(f"{a.http}/api/v1/users/zoe/online", headers=AUTH)
                return bool(got.json()["online"])
            assert not await online()
            tab = ChannelClient(f"{b.ws}/ws/notifications?token={token('zoe')}", implicit=True)
            await tab.start()
            await until(online, "zoe online on A")
            await tab.stop()

            async def offline() -> bool:
                return not await online()
            await until(offline, "zoe offline on A")
    finally:
        a.stop()
        b.stop()
