"""Several real server processes on the machine's Redis and PostgreSQL act as one server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import VENV_BIN, JsonClient, ProviderRepl, ServerProcess, providers
from tests.polling import eventually, eventually_sync
from tests.services import (
    REDIS_URL,
    free_port,
    fresh_database,
    private_redis,
    require_redis,
)

AUTH = {"Authorization": "Bearer k"}
STEP = {"stepType": "replace", "from": 1, "to": 1,
        "slice": {"content": [{"type": "text", "text": "hi"}]}}


@contextlib.contextmanager
def instances(count: int, store: str, broker: str = REDIS_URL, *extra: str,
              prefix: str | None = None) -> Iterator[list[ServerProcess]]:
    """``count`` captify-ws processes sharing a broker and a store."""
    prefix = prefix or f"test-{secrets.token_hex(4)}"
    procs = []
    try:
        for _ in range(count):
            procs.append(ServerProcess([
                "--port", "0", "--store", store, "--broker", broker, "--broker-prefix", prefix,
                "--cluster-heartbeat-s", "0.5", "--anti-entropy-s", "1", "--api-key", "k",
                "--room-grace-s", "30", *extra]).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def shared_store() -> Iterator[str]:
    require_redis()
    with fresh_database() as url:
        yield url


async def _json(proc: ServerProcess, document_id: str, client_id: str) -> Any:
    return await JsonClient.open(proc.ws, document_id, client_id)


async def _until(predicate: Any, timeout: float, what: str) -> None:
    await eventually(predicate, what, timeout, interval=0.05)


async def _both_see(instances_: tuple[ServerProcess, ...], document_id: str, count: int) -> None:
    """Every instance counts ``count`` connections on the document, its own and the others'
    (heartbeats crossed): each instance has the document loaded and subscribed."""
    async with httpx.AsyncClient(timeout=5) as http:
        async def counted() -> bool:
            for proc in instances_:
                answer = await http.get(f"{proc.http}/api/v1/connections", headers=AUTH,
                                        params={"documentId": document_id})
                if answer.json().get("count") != count:
                    return False
            return True

        await eventually(counted, f"{count} connections on {document_id!r} everywhere")


async def _converge(repl: ProviderRepl, names: list[str], timeout: float = 15) -> str:
    texts: list[str] = []

    async def same() -> bool:
        nonlocal texts
        texts = [(await repl.call("snapshot", name=n))["text"] for n in names]
        return all(t == texts[0] for t in texts)
    await _until(same, timeout, f"convergence of {names}: {texts}")
    return texts[0]


async def test_providers_and_json_clients_across_two_instances(shared_store: str) -> None:
    """Edits and presence flow between clients of one document on different instances, in
    both wire formats; counts are cluster-wide."""
    with instances(2, shared_store) as (a, b):
        async with providers() as repl:
            await repl.call("open", name="pa", url=f"{a.ws}/ws/fabric", doc="shared")
            await repl.call("open", name="pb", url=f"{b.ws}/ws/fabric", doc="shared")
            await repl.call("waitSynced", name="pa")
            await repl.call("waitSynced", name="pb")
            json_b = await _json(b, "shared", "json-b")
            await repl.call("insertTokens", name="pa", count=20, seed=1, delayMs=2)
            await repl.call("insertTokens", name="pb", count=20, seed=2, delayMs=2)
            await json_b.edit("from-json-b;")
            # the providers may agree before the JSON edit reached them: wait for it first
            await repl.call("waitUntil", name="pa", field="text", contains="from-json-b;")
            text = await _converge(repl, ["pa", "pb"])
            assert "from-json-b;" in text and "pa:19;" in text and "pb:19;" in text

            async def json_has_all() -> bool:
                with contextlib.suppress(TimeoutError):
                    while True:
                        json_b.apply(await json_b.expect("update", timeout=0.05))
                return str(json_b.text) == text
            await _until(json_has_all, 10, "the JSON client on B gets A's edits")

            # presence across instances, both ways, and removal when a client leaves
            await repl.call("setAwareness", name="pa", state={"user": "on-a"})
            pa_id = str((await repl.call("awareness", name="pa"))["clientID"])

            async def b_sees_a() -> bool:
                states = (await repl.call("awareness", name="pb"))["states"]
                return states.get(pa_id) == {"user": "on-a"}
            await _until(b_sees_a, 10, "presence of A's provider on B")
            seen = await json_b.expect("awareness", timeout=10,
                                       where=lambda m: m["clientID"] == pa_id)
            assert seen["data"] == {"user": "on-a"}
            await json_b.send({"type": "awareness", "documentId": "shared",
                               "data": {"user": "json-b"}})

            async def a_sees_json() -> bool:
                states = (await repl.call("awareness", name="pa"))["states"]
                return {"user": "json-b"} in states.values()
            await _until(a_sees_json, 10, "presence of B's JSON client on A")

            async with httpx.AsyncClient(timeout=10) as http:
                async def counted() -> bool:
                    got = await http.get(f"{a.http}/api/v1/connections?documentId=shared",
                                         headers=AUTH)
                    return bool(got.json()["count"] == 3)
                await _until(counted, 10, "cluster-wide count of 3 on A")

            await repl.call("close", name="pa")
            gone = await json_b.expect("awareness", timeout=10,
                                       where=lambda m: m["clientID"] == pa_id
                                       and m["data"] is None)
            assert gone["data"] is None
            await json_b.ws.close()


async def test_dead_instance_disappears(shared_store: str) -> None:
    """kill -9 of an instance: its clients' presence and connections vanish from the others
    within the documented bound (3 heartbeats + 1)."""
    with instances(2, shared_store) as (a, b):
        async with providers() as repl, httpx.AsyncClient(timeout=10) as http:
            await repl.call("open", name="pa", url=f"{a.ws}/ws/fabric", doc="mortal")
            await repl.call("open", name="pb", url=f"{b.ws}/ws/fabric", doc="mortal")
            await repl.call("waitSynced", name="pa")
            await repl.call("waitSynced", name="pb")
            await repl.call("setAwareness", name="pb", state={"user": "doomed"})
            pb_id = str((await repl.call("awareness", name="pb"))["clientID"])

            async def a_sees_b() -> bool:
                return pb_id in (await repl.call("awareness", name="pa"))["states"]
            await _until(a_sees_b, 10, "B's presence on A")

            async def count_is(n: int) -> bool:
                got = await http.get(f"{a.http}/api/v1/connections?handler=fabric",
                                     headers=AUTH)
                return bool(got.json()["count"] == n)
            await _until(lambda: count_is(2), 10, "2 connections cluster-wide")
            await repl.call("close", name="pb")  # its provider would reconnect elsewhere
            b.kill9()
            killed = time.monotonic()

            async def a_forgot_b() -> bool:
                return pb_id not in (await repl.call("awareness", name="pa"))["states"]
            await _until(a_forgot_b, 5, "B's presence removed after B died")
            await _until(lambda: count_is(1), 5, "B's connections dropped from the count")
            assert time.monotonic() - killed < 4 * 0.5 + 2.5


async def test_broadcast_api_reaches_clients_on_every_instance(shared_store: str) -> None:
    """broadcast_steps through instance A reaches clients on B; to_client reaches one client
    wherever it is connected."""
    with instances(2, shared_store) as (a, b):
        on_a = await _json(a, "steps-doc", "client-a")
        on_b = await _json(b, "steps-doc", "client-b")
        await _both_see((a, b), "steps-doc", 2)
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{a.http}/api/v1/documents/steps-doc/steps",
                                       headers=AUTH, json={"steps": [STEP], "changeId": "c1"})
            assert response.status_code == 200
            for client in (on_a, on_b):
                assert (await client.expect("steps", timeout=5))["data"]["changeId"] == "c1"
            await http.post(f"{a.http}/api/v1/documents/steps-doc/steps", headers=AUTH,
                            json={"steps": [], "changeId": "c2", "clientID": "client-b"})
            assert (await on_b.expect("steps", timeout=5))["data"]["changeId"] == "c2"
            assert [m for m in await on_a.quiet(0.5) if m["type"] == "steps"] == []
        await on_a.ws.close()
        await on_b.ws.close()


async def test_redis_cli_publish_contract(shared_store: str) -> None:
    """A backend in any language publishes steps with a plain PUBLISH (here: redis-cli)."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is not installed")
    prefix = f"test-{secrets.token_hex(4)}"
    with instances(2, shared_store, prefix=prefix) as (a, b):
        on_a = await _json(a, "emitted", "ca")
        on_b = await _json(b, "emitted", "cb")
        await _both_see((a, b), "emitted", 2)
        message = json.dumps({"type": "steps", "documentId": "emitted", "steps": [STEP],
                              "changeId": "from-redis-cli"})
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "PUBLISH",
                        f"{prefix}:publish", message], check=True, capture_output=True)
        for client in (on_a, on_b):
            got = await client.expect("steps", timeout=5)
            assert got["data"] == {"version": 0, "steps": [STEP], "clientIDs": ["server"],
                                   "changeId": "from-redis-cli"}
        # every instance got the PUBLISH; the change id made sure it was applied once
        assert [m for m in await on_a.quiet(0.5) if m["type"] == "steps"] == []
        to_one = ('{"type":"steps","documentId":"emitted","steps":[],"changeId":"only-a",'
                  '"clientID":"ca"}')
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "PUBLISH",
                        f"{prefix}:publish", to_one], check=True, capture_output=True)
        assert (await on_a.expect("steps", timeout=5))["data"]["changeId"] == "only-a"
        assert [m for m in await on_b.quiet(0.5) if m["type"] == "steps"] == []
        await on_a.ws.close()
        await on_b.ws.close()


async def test_redis_restart_during_editing_converges(shared_store: str) -> None:
    """Restart Redis while clients on two instances type: everyone converges within the
    documented bound and no token is lost."""
    with private_redis() as redis, instances(2, shared_store, redis.url) as (a, b):
        async with providers() as repl:
            names = ["a1", "a2", "b1", "b2"]
            for name in names:
                server = a if name.startswith("a") else b
                await repl.call("open", name=name, url=f"{server.ws}/ws/fabric", doc="storm")
            for name in names:
                await repl.call("waitSynced", name=name)
            typing = asyncio.gather(*(repl.call("insertTokens", name=n, count=120, seed=i + 1,
                                                delayMs=10, wait=60)
                                      for i, n in enumerate(names)))
            async def typed(name: str) -> int:  # tokens of ``name`` that ``name`` holds
                return int((await repl.call("snapshot", name=name))["text"].count(f"{name}:"))

            async def under_way() -> bool:
                return await typed("a1") >= 20

            await eventually(under_way, "the typing to be under way", interval=0.01)
            redis.stop()
            before = await typed("a1")

            async def typed_while_down() -> bool:
                return await typed("a1") >= before + 30

            # edits made now cross instances only after the restart
            await eventually(typed_while_down, "edits made while Redis is down", interval=0.01)
            redis.start()
            await typing
            restarted = time.monotonic()
            text = await _converge(repl, names, timeout=20)
            converged_after = time.monotonic() - restarted
            expected = {f"{n}:{i};" for n in names for i in range(120)}
            assert all(token in text for token in expected)
            assert converged_after < 10, converged_after  # broker retry + anti-entropy round


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_workers_share_one_port(shared_store: str, kind: str, tmp_path: Any) -> None:
    """--workers 2 serves one port from two processes, which act as one server (on one
    PostgreSQL, or on one new SQLite file both workers create at once)."""
    port = free_port()
    store = shared_store if kind == "postgres" else f"sqlite:///{tmp_path}/workers.db"
    proc = ServerProcess(["--port", str(port), "--workers", "2", "--store", store,
                          "--broker", REDIS_URL, "--broker-prefix",
                          f"test-{secrets.token_hex(4)}", "--api-key", "k",
                          # without document affinity: the clients of one document stay on
                          # both workers (test_worker_affinity.py has it on)
                          "--worker-affinity-limit", "0"]).start()
    try:
        # both workers answer on the one port (each names itself in x-captify-instance)
        pids: set[str | None] = set()

        def both_workers_answer() -> bool:
            pids.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5,
                               headers={"Connection": "close"}).headers.get(
                                   "x-captify-instance"))
            return len(pids) == 2

        eventually_sync(both_workers_answer, "the second worker", timeout=20)
        assert None not in pids

        async def many_clients() -> str:
            # Clients until each worker serves some (each counts its own in the admin stats'
            # "self" entry): the edits below then have to cross between the workers.
            clients: list[JsonClient] = []
            counts: dict[str, int] = {}
            async with httpx.AsyncClient(timeout=5) as http:
                async def on_both_workers() -> bool:
                    for _ in range(10):
                        stats = (await http.get(f"{proc.http}/admin/api/stats", headers={
                            "Authorization": "Bearer k", "Connection": "close"})).json()
                        own = next(entry for entry in stats["instances"] if entry["self"])
                        counts[stats["instance"]] = own["handlers"].get("fabric", 0)
                    return len(counts) == 2 and all(counts.values())

                while len(clients) < 8 or not await on_both_workers():
                    assert len(clients) < 40, f"40 clients, not on both workers: {counts}"
                    clients.append(await _json(proc, "workers-doc", f"c{len(clients)}"))
            for index, client in enumerate(clients):
                await client.edit(f"w{index};")
            final = clients[0]

            async def has_every_edit() -> bool:
                await final.sync()
                return all(f"w{i};" in str(final.text) for i in range(len(clients)))

            await eventually(has_every_edit, "every worker's edits in one client", timeout=10)
            for client in clients:
                await client.ws.close()
            return str(final.text)
        text = asyncio.run(many_clients())
        assert all(f"w{i};" in text for i in range(8)), text
    finally:
        assert proc.stop() == 0


def test_workers_refuse_without_shared_services() -> None:
    """--workers with the memory broker or store refuses to start and says why."""
    result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--workers", "2",
                             "--store", "memory"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "needs a shared broker and a shared store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_broker_unreachable_at_start_is_one_line() -> None:
    """serve exits with one line naming the broker URL when Redis is not there."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--port", "0",
                             "--store", "memory", "--broker", url], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("captify-ws:")]
    assert len(lines) == 1 and url in lines[0], result.stderr


async def test_revocation_reaches_every_instance(shared_store: str) -> None:
    """POST …/revoke on instance A closes the user's connection on instance B (4403) and
    keeps it out there too."""
    import jwt as pyjwt

    secret = "cluster-revocation-secret-long-enough!!"
    token = pyjwt.encode({"sub": "mallory", "exp": int(time.time()) + 600}, secret,
                         algorithm="HS256")
    with instances(2, shared_store, REDIS_URL, "--auth", "jwt",
                   "--jwt-secret", secret) as (a, b):
        from websockets.asyncio.client import connect

        async with connect(f"{b.ws}/ws/fabric?documentId=vault&token={token}") as on_b:
            assert '"connected"' in str(await on_b.recv())
            async with httpx.AsyncClient(timeout=10) as http:
                async def a_counts_it() -> bool:  # the cluster knows of the connection on B
                    answer = await http.get(f"{a.http}/api/v1/connections",
                                            params={"documentId": "vault"}, headers=AUTH)
                    return bool(answer.json().get("count") == 1)

                await eventually(a_counts_it, "A to count the connection on B")
                answer = await http.post(f"{a.http}/api/v1/documents/vault/revoke",
                                         headers=AUTH, json={"userId": "mallory", "to": "none"})
                assert answer.status_code == 200
            with contextlib.suppress(Exception):
                while True:
                    await asyncio.wait_for(on_b.recv(), 5)
            assert on_b.close_code == 4403
        async with connect(f"{b.ws}/ws/fabric?documentId=vault&token={token}") as again:
            with contextlib.suppress(Exception):
                while True:
                    await asyncio.wait_for(again.recv(), 5)
            assert again.close_code == 4403
