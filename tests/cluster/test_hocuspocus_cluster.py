"""Hocuspocus providers on two real instances sharing Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.cluster.test_cluster import AUTH, instances, shared_store  # noqa: F401 (fixture)
from tests.helpers import ROOT, ProviderRepl, hocuspocus_providers, providers
from tests.polling import eventually

HOOKS = "tests.outside.hocuspocus_hooks"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    await eventually(check, what, timeout, interval=0.1)


async def same_text(repls: list[tuple[ProviderRepl, str]]) -> str:
    texts: list[str] = []

    async def same() -> bool:
        nonlocal texts
        texts = [(await repl.call("snapshot", name=name))["text"] for repl, name in repls]
        return all(t == texts[0] for t in texts)

    await until(same, f"convergence: {texts}")
    return texts[0]


async def test_hocuspocus_across_two_instances(shared_store: str,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Providers on instance A and B and a y-websocket provider edit one document and see each
    other's presence; revocation, token requests and stateless messages published on A (over
    HTTP, and with a plain redis-cli PUBLISH) reach the providers on B."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the instances import tests.outside
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is not installed")
    prefix = f"test-{secrets.token_hex(4)}"
    with instances(2, shared_store, "redis://127.0.0.1:6379/0", "--auth",
                   f"{HOOKS}:authenticate", prefix=prefix) as (a, b):
        async with hocuspocus_providers() as hocus, providers() as yws:
            await hocus.call("socket", name="sa", url=f"{a.ws}/ws/hocuspocus", impl="v4")
            await hocus.call("socket", name="sb", url=f"{b.ws}/ws/hocuspocus", impl="v3")
            for socket, impl, user in (("sa", "v4", "ann"), ("sb", "v3", "bob")):
                for doc in ("c1", "c2"):
                    await hocus.call("open", name=f"{socket}/{doc}", socket=socket, doc=doc,
                                     impl=impl, token=user)
            await yws.call("open", name="y", url=f"{b.ws}/ws/fabric", doc="c1",
                           params={"token": "yuri"})
            names = ["sa/c1", "sa/c2", "sb/c1", "sb/c2"]
            await asyncio.gather(*(hocus.call("waitSynced", name=n) for n in names))
            await hocus.call("randomEdits", name="sa/c1", count=15, seed=1, delayMs=3)
            await hocus.call("randomEdits", name="sb/c1", count=15, seed=2, delayMs=3)
            await hocus.call("insert", name="sb/c2", text="c2 from b;")
            await same_text([(hocus, "sa/c1"), (hocus, "sb/c1")])
            await hocus.call("waitUntil", name="sa/c2", field="text", equals="c2 from b;")
            await asyncio.gather(*(hocus.call("waitUnsynced0", name=n) for n in names))

            await hocus.call("setAwareness", name="sa/c1", state={"user": {"name": "on-a"}})

            async def b_sees_a() -> bool:
                states = (await yws.call("awareness", name="y"))["states"]
                return any(s and s.get("user", {}).get("name") == "on-a"
                           for s in states.values())

            await until(b_sees_a, "presence of A's provider at B's y-websocket client")

            async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
                answer = await http.post(f"{a.http}/api/v1/documents/c1/stateless",
                                         json={"payload": "to all"})
                assert answer.status_code == 200
                await http.post(f"{a.http}/api/v1/documents/c2/stateless",
                                json={"payload": "to bob", "userId": "bob"})
                subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "PUBLISH",
                                f"{prefix}:publish", json.dumps({
                                    "type": "stateless", "documentId": "c1",
                                    "payload": "via redis"})],
                               check=True, capture_output=True)
                for name in ("sa/c1", "sb/c1"):
                    state = await hocus.call("waitState", name=name, field="stateless", length=2)
                    assert state["stateless"] == ["to all", "via redis"]
                assert (await hocus.call("waitState", name="sb/c2", field="stateless",
                                         length=1))["stateless"] == ["to bob"]
                assert (await hocus.call("state", name="sa/c2"))["stateless"] == []

                await hocus.call("setToken", name="sb/c2", token="bob")
                answer = await http.post(f"{a.http}/api/v1/documents/c2/token-request",
                                         json={"userId": "bob"})
                assert answer.status_code == 200
                await hocus.call("waitState", name="sb/c2", field="tokenRequests", equals=2)

                answer = await http.post(f"{a.http}/api/v1/documents/c1/revoke",
                                         headers=AUTH, json={"userId": "bob", "to": "read"})
                assert answer.status_code == 200
                await hocus.call("waitState", name="sb/c1", field="scope", equals="readonly")
                await http.post(f"{a.http}/api/v1/documents/c1/revoke", headers=AUTH,
                                json={"userId": "bob", "to": "none"})
                state = await hocus.call("waitState", name="sb/c1", field="failures", length=1)
                assert state["failures"] == ["access revoked"]
            await hocus.call("insert", name="sb/c2", text="bob's c2 still works;")
            await hocus.call("waitUntil", name="sa/c2", field="text",
                             contains="bob's c2 still works;")
