"""Real npm y-websocket WebsocketProviders against captify-ws (/ws/fabric/{documentId})."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers import ProviderRepl, json_client, providers, running_server
from tests.polling import eventually, stays


async def _snapshots(repl: ProviderRepl, names: list[str]) -> list[dict[str, Any]]:
    results = await asyncio.gather(*(repl.call("snapshot", name=name) for name in names))
    return [{key: r[key] for key in ("text", "map", "xml")} for r in results]


async def converge(repl: ProviderRepl, names: list[str], timeout: float = 20) -> dict[str, Any]:
    """Wait until every provider holds the same text, map and XML; return that content."""
    async def same() -> dict[str, Any] | None:
        snaps = await _snapshots(repl, names)
        assert all(snap == snaps[0] for snap in snaps), f"not converged: {snaps}"
        return snaps[0]

    content: dict[str, Any] = await eventually(same, "the providers to converge", timeout,
                                               interval=0.1)
    return content


async def _open(repl: ProviderRepl, url: str, doc: str, names: list[str]) -> None:
    for name in names:
        await repl.call("open", name=name, url=url, doc=doc)
    await asyncio.gather(*(repl.call("waitSynced", name=name) for name in names))


@pytest.mark.parametrize("count", [2, 20])
async def test_concurrent_random_edits_converge(transport: str, count: int) -> None:
    """N providers editing a Y.Text, Y.Map and Y.XmlFragment at once end up identical."""
    async with running_server(transport) as srv, providers() as repl:
        names = [f"p{i}" for i in range(count)]
        await _open(repl, f"{srv.ws}/ws/fabric", "random-doc", names)
        await asyncio.gather(*(repl.call("randomEdits", name=name, count=30, seed=i + 1,
                                         delayMs=2) for i, name in enumerate(names)))
        content = await converge(repl, names)
        assert content["text"] and content["map"] and content["xml"]
        for i, name in enumerate(names):  # every provider's last inserts made it
            assert any(f"{name}{k};" in content["text"] for k in range(30)) or \
                f"{name}-" in str(content["map"]) or f">{name}" in content["xml"], i
        async with json_client(srv, "random-doc", "checker") as checker:
            await checker.sync()  # the server's document equals the providers'
            assert str(checker.doc.get("text", type=type(checker.text))) == content["text"]


@pytest.mark.parametrize("impl", ["v1", "v2"])
async def test_older_y_websocket_clients(impl: str) -> None:
    """y-websocket 1.5.x and 2.x providers sync and converge too."""
    async with running_server() as srv, providers(impl) as repl:
        await _open(repl, f"{srv.ws}/ws/fabric", "old-clients", ["a", "b"])
        await repl.call("insert", name="a", text="from a;")
        await repl.call("mapSet", name="b", key="k", value="from b")
        content = await converge(repl, ["a", "b"])
        assert content["text"] == "from a;" and content["map"] == {"k": "from b"}


async def test_offline_edits_merge_on_reconnect(transport: str) -> None:
    """A provider that goes offline, edits, and reconnects merges its offline edits."""
    async with running_server(transport) as srv, providers() as repl:
        await _open(repl, f"{srv.ws}/ws/fabric", "offline", ["a", "b"])
        await repl.call("insert", name="a", text="shared;")
        await converge(repl, ["a", "b"])
        await repl.call("disconnect", name="a")
        await repl.call("insert", name="a", text="offline-a;")
        await repl.call("insert", name="b", text="online-b;")
        async def b_lacks_offline_edit() -> bool:
            return "offline-a" not in (await repl.call("snapshot", name="b"))["text"]

        await stays(b_lacks_offline_edit, "b without a's offline edit", seconds=0.3)
        await repl.call("connect", name="a")
        await repl.call("waitSynced", name="a")
        content = await converge(repl, ["a", "b"])
        assert "offline-a;" in content["text"] and "online-b;" in content["text"]


async def test_fresh_provider_gets_the_whole_document(transport: str) -> None:
    """After everyone left, a new provider receives the whole document."""
    async with running_server(transport, room_grace_s=30) as srv, providers() as repl:
        await _open(repl, f"{srv.ws}/ws/fabric", "fresh", ["a", "b"])
        await repl.call("randomEdits", name="a", count=40, seed=7)
        await repl.call("randomEdits", name="b", count=40, seed=8)
        content = await converge(repl, ["a", "b"])
        await repl.call("close", name="a")
        await repl.call("close", name="b")
        await eventually(lambda: srv.server.get_connection_count(document_id="fresh") == 0,
                         "a and b to have left")
        await _open(repl, f"{srv.ws}/ws/fabric", "fresh", ["c"])
        assert (await _snapshots(repl, ["c"]))[0] == content


async def test_awareness_appears_and_disappears(transport: str) -> None:
    """Presence states show up on other providers and vanish when their provider leaves."""
    async with running_server(transport) as srv, providers() as repl:
        await _open(repl, f"{srv.ws}/ws/fabric", "presence", ["a", "b"])
        await repl.call("setAwareness", name="a", state={"user": "Ann"})
        b_id = (await repl.call("awareness", name="b"))["clientID"]
        a_id = (await repl.call("awareness", name="a"))["clientID"]
        await repl.call("setAwareness", name="b", state={"user": "Bo", "cursor": 3})

        async def states_of(name: str) -> dict[str, Any]:
            return (await repl.call("awareness", name=name))["states"]  # type: ignore[no-any-return]

        async def both_seen() -> bool:
            return (await states_of("a")).get(str(b_id)) == {"user": "Bo", "cursor": 3} and \
                (await states_of("b")).get(str(a_id)) == {"user": "Ann"}

        await eventually(both_seen, "each provider's presence at the other", timeout=5,
                         interval=0.05)
        await _open(repl, f"{srv.ws}/ws/fabric", "presence", ["c"])

        async def joiner_sees_both() -> bool:
            return {str(a_id), str(b_id)} <= set(await states_of("c"))

        # a joiner gets the current states at once (not at the others' next renewal, 15 s)
        await eventually(joiner_sees_both, "the current states at the joiner", timeout=3,
                         interval=0.05)
        await repl.call("close", name="b")

        async def b_gone() -> bool:
            return str(b_id) not in await states_of("a") and \
                str(b_id) not in await states_of("c")

        await eventually(b_gone, "b's presence to be removed", timeout=5, interval=0.05)


async def test_json_client_and_provider_converge_both_ways(transport: str) -> None:
    """A JSON client and a y-websocket provider on one document see each other's edits."""
    async with running_server(transport) as srv, providers() as repl, \
            json_client(srv, "mixed", "json-1") as jc:
        await _open(repl, f"{srv.ws}/ws/fabric", "mixed", ["p"])
        await jc.edit("from-json;")
        await repl.call("waitUntil", name="p", field="text", contains="from-json;")
        await repl.call("insert", name="p", text="from-yjs;")
        relayed = await jc.expect("update")
        jc.apply(relayed)
        assert str(jc.text) == "from-json;from-yjs;"
        assert (await repl.call("snapshot", name="p"))["text"] == str(jc.text)


async def test_json_and_provider_presence_interoperate(transport: str) -> None:
    """A JSON client's awareness is a Yjs awareness state, and the other way round."""
    async with running_server(transport) as srv, providers() as repl, \
            json_client(srv, "mixed-presence", "12345") as jc:
        await _open(repl, f"{srv.ws}/ws/fabric", "mixed-presence", ["p"])
        await jc.send({"type": "awareness", "documentId": "mixed-presence",
                       "data": {"user": "json"}})
        async def json_presence_at_provider() -> bool:
            states = (await repl.call("awareness", name="p"))["states"]
            return bool(states.get("12345") == {"user": "json"})

        await eventually(json_presence_at_provider, "the JSON presence at the provider",
                         timeout=5, interval=0.05)
        p_id = (await repl.call("awareness", name="p"))["clientID"]
        await repl.call("setAwareness", name="p", state={"user": "yjs"})
        seen = await jc.expect("awareness", where=lambda m: m["clientID"] == str(p_id)
                               and m["data"] == {"user": "yjs"})
        assert seen["documentId"] == "mixed-presence"
        await repl.call("close", name="p")
        gone = await jc.expect("awareness", where=lambda m: m["clientID"] == str(p_id)
                               and m["data"] is None)
        assert gone["data"] is None


async def test_idle_provider_alone_is_not_dropped() -> None:
    """A provider alone in an idle document hears back its own awareness renewal within
    ``awareness_renewal_s`` (10 s by default, 0.3 s here), so with y-protocols renewing every
    15 s it is never silent for the 30 s after which y-websocket drops the socket. The 15 s
    timer is run here by hand: a renewal is ``setLocalState`` with the same state."""
    renewal = 0.3
    state = {"user": {"name": "solo"}}
    async with running_server(awareness_renewal_s=renewal) as srv, providers() as repl:
        await _open(repl, f"{srv.ws}/ws/fabric", "lonely", ["solo"])
        await repl.call("setAwareness", name="solo", state=state)

        async def silent_for(ms: float) -> bool:
            return bool((await repl.call("status", name="solo"))["silentMs"] >= ms)

        for _ in range(3):
            await eventually(lambda: silent_for(2 * renewal * 1000), "a quiet document")
            renewed = time.monotonic()
            await repl.call("setAwareness", name="solo", state=state)

            async def heard_back(renewed: float = renewed) -> bool:
                status = await repl.call("status", name="solo")
                assert status["connected"] and status["closes"] == [], status
                return bool(status["silentMs"] < (time.monotonic() - renewed) * 1000)

            await eventually(heard_back, "the server to forward the renewal",
                             timeout=renewal + 2)
