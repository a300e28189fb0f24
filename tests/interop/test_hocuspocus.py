"""Real @hocuspocus/provider 2.15, 3.4 and 4.x providers against /ws/hocuspocus."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
from pycrdt import Doc, Text

from captify_ws.protocol.hocuspocus import FrameEncoder
from tests.helpers import (
    ProviderRepl,
    RunningServer,
    hocuspocus_providers,
    json_client,
    providers,
    running_server,
)
from tests.outside import hocuspocus_hooks
from tests.polling import eventually, stays

IMPLS = ("v2", "v3", "v4")
SECRET = "test-secret-that-is-long-enough-for-hs256"
HOOKS = "tests.outside.hocuspocus_hooks"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET,
                      algorithm="HS256")


def url(srv: RunningServer) -> str:
    return f"{srv.ws}/ws/hocuspocus"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    await eventually(check, what, timeout, interval=0.05)


async def converge(repl: ProviderRepl, names: list[str], timeout: float = 20) -> dict[str, Any]:
    """Every provider holds the same text, map and XML; returns it."""
    snaps: list[dict[str, Any]] = []

    async def same() -> bool:
        nonlocal snaps
        replies = await asyncio.gather(*(repl.call("snapshot", name=n) for n in names))
        snaps = [{k: r[k] for k in ("text", "map", "xml")} for r in replies]
        return all(snap == snaps[0] for snap in snaps)

    await until(same, f"convergence of {names}: {snaps}", timeout)
    return snaps[0]


async def server_text(srv: RunningServer, document_id: str) -> str:
    doc: Doc = Doc()
    state = await srv.server.get_document(document_id)
    assert state is not None
    doc.apply_update(state)
    return str(doc.get("text", type=Text))


async def test_three_versions_ten_documents_on_shared_sockets_converge() -> None:
    """One socket per provider version, ten documents on each: every document converges across
    the three versions, each provider's changes are acknowledged, and the server holds them."""
    async with running_server() as srv, hocuspocus_providers() as repl:
        docs = [f"multi-{d}" for d in range(10)]
        for impl in IMPLS:
            await repl.call("socket", name=impl, url=url(srv), impl=impl)
            for doc in docs:
                await repl.call("open", name=f"{impl}/{doc}", socket=impl, doc=doc, impl=impl,
                                token=None if impl == "v2" else "")
        names = [f"{impl}/{doc}" for impl in IMPLS for doc in docs]
        await asyncio.gather(*(repl.call("waitSynced", name=n) for n in names))
        assert srv.server.get_connection_count(handler="hocuspocus") == 3  # three sockets
        assert srv.server.get_connection_count(document_id="multi-0") == 3
        await asyncio.gather(*(repl.call("randomEdits", name=n, count=12, seed=i + 1,
                                         delayMs=3) for i, n in enumerate(names)))
        for doc in docs:
            content = await converge(repl, [f"{impl}/{doc}" for impl in IMPLS])
            assert await server_text(srv, doc) == content["text"]
        states = await asyncio.gather(*(repl.call("waitUnsynced0", name=n) for n in names))
        assert all(not s["hasUnsyncedChanges"] and s["scope"] == "read-write"
                   for s in states[10:])  # v2 reports no scope event but is acknowledged too


async def test_mixed_wire_formats_converge_and_share_presence() -> None:
    """Hocuspocus, y-websocket and JSON clients of one document converge and see each other's
    presence."""
    async with running_server() as srv, hocuspocus_providers() as hocus, \
            providers() as yws, json_client(srv, "mixed", "json-1") as json:
        await hocus.call("open", name="h4", url=url(srv), doc="mixed", impl="v4", token="")
        await hocus.call("open", name="h2", url=url(srv), doc="mixed", impl="v2")
        await yws.call("open", name="y", url=f"{srv.ws}/ws/fabric", doc="mixed")
        await asyncio.gather(hocus.call("waitSynced", name="h4"),
                             hocus.call("waitSynced", name="h2"), yws.call("waitSynced", name="y"))
        await hocus.call("insert", name="h4", text="[hocus]")
        await yws.call("insert", name="y", text="[yws]")
        await json.sync()
        await json.edit("[json]")
        for want in ("[hocus]", "[yws]", "[json]"):
            await hocus.call("waitUntil", name="h2", field="text", contains=want)
            await yws.call("waitUntil", name="y", field="text", contains=want)
        final = (await hocus.call("snapshot", name="h2"))["text"]
        await until(lambda: _same_text(hocus, yws, final), "h4, y equal h2")

        await hocus.call("setAwareness", name="h4", state={"user": {"name": "Hocus"}})
        await yws.call("setAwareness", name="y", state={"user": {"name": "Yws"}})
        await json.send({"type": "awareness", "documentId": "mixed",
                         "data": {"user": {"name": "Json"}}})

        async def names_seen(repl: ProviderRepl, name: str) -> set[str]:
            states = (await repl.call("awareness", name=name))["states"]
            return {s["user"]["name"] for s in states.values() if s and "user" in s}

        async def everyone() -> bool:
            return {"Hocus", "Yws", "Json"} <= await names_seen(hocus, "h2") and \
                {"Hocus", "Json"} <= await names_seen(yws, "y")

        await until(everyone, "presence across the three formats")
        seen_by_json: set[str] = set()
        while not {"Hocus", "Yws"} <= seen_by_json:
            message = await json.expect("awareness", timeout=10)
            if message["data"]:
                seen_by_json.add(message["data"]["user"]["name"])


async def _same_text(hocus: ProviderRepl, yws: ProviderRepl, text: str) -> bool:
    return (await hocus.call("snapshot", name="h4"))["text"] == text and \
        (await yws.call("snapshot", name="y"))["text"] == text


async def test_read_only_and_denied_documents_on_one_socket() -> None:
    """The authorizer decides per document: a read-only one syncs and relays presence but
    applies nothing (SyncStatus 0 keeps the provider's changes unsynced); a refused one gets
    PermissionDenied with the reason; the socket's other document keeps working."""
    async with running_server(authorizer=f"{HOOKS}:authorize") as srv, \
            hocuspocus_providers() as repl:
        await srv.server.apply_update("ro-doc", _text_update("from the server;"))
        await repl.call("socket", name="s", url=url(srv), impl="v4")
        for name, doc in (("ro", "ro-doc"), ("no", "no-doc"), ("ok", "ok-doc")):
            await repl.call("open", name=name, socket="s", doc=doc, impl="v4", token="")
        await repl.call("open", name="ro2", url=url(srv), doc="ro-doc", impl="v3", token="")
        await repl.call("open", name="ok2", url=url(srv), doc="ok-doc", impl="v3", token="")
        state = await repl.call("waitSynced", name="ro")
        assert state["scope"] == "readonly" and state["authenticatedEvents"] == ["readonly"]
        assert (await repl.call("snapshot", name="ro"))["text"] == "from the server;"
        denied = await repl.call("waitState", name="no", field="failures", length=1)
        assert denied["failures"] == ["no entry for you"] and not denied["authenticated"]

        await repl.call("insert", name="ro", text="read-only edit;")
        await repl.call("waitState", name="ro", field="unsynced", equals=1)
        await repl.call("setAwareness", name="ro", state={"user": {"name": "Reader"}})

        async def reader_seen() -> bool:
            states = (await repl.call("awareness", name="ro2"))["states"]
            return any(s and s.get("user", {}).get("name") == "Reader" for s in states.values())

        await until(reader_seen, "the read-only provider's presence")
        await srv.server.apply_update("ro-doc", _text_update("more;"))
        await repl.call("waitUntil", name="ro2", field="text", contains="more;")
        assert "read-only edit" not in await server_text(srv, "ro-doc")
        assert "read-only edit" not in (await repl.call("snapshot", name="ro2"))["text"]
        assert (await repl.call("state", name="ro"))["hasUnsyncedChanges"]

        await repl.call("waitSynced", name="ok")
        await repl.call("insert", name="ok", text="fine;")
        await repl.call("waitUntil", name="ok2", field="text", equals="fine;")
        await repl.call("waitUnsynced0", name="ok")
        assert (await repl.call("socketStatus", socket="s"))["closes"] == []


def _text_update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def test_tokens_per_document_refresh_and_revocation() -> None:
    """JWT per document (jwt-claims): a token's documents open, others are refused; a token
    request makes the provider send a new token, whose claims change the scope; a revocation
    turns the document read-only, then closes it, on this document only."""
    async with running_server(auth="jwt", jwt_secret=SECRET, authorizer="jwt-claims") as srv, \
            hocuspocus_providers() as repl:
        first = token("alice", docs={"tok-*": "write"})
        await repl.call("socket", name="s", url=url(srv), impl="v4")
        await repl.call("open", name="a", socket="s", doc="tok-a", impl="v4", token=first)
        await repl.call("open", name="b", socket="s", doc="tok-b", impl="v4", token=first)
        await repl.call("open", name="x", socket="s", doc="other", impl="v4", token=first)
        await repl.call("open", name="bad", socket="s", doc="tok-c", impl="v4", token="forged")
        await repl.call("open", name="b2", url=url(srv), doc="tok-b", impl="v3",
                        token=token("bob", docs=["tok-*"]))
        for name in ("a", "b", "b2"):
            assert (await repl.call("waitSynced", name=name))["scope"] == "read-write"
        assert (await repl.call("waitState", name="x", field="failures", length=1))[
            "failures"] == ["Access denied"]
        assert "invalid token" in (await repl.call(
            "waitState", name="bad", field="failures", length=1))["failures"][0]

        # The server asks for a fresh token; this one only lets alice read tok-a.
        await repl.call("setToken", name="a", token=token("alice", docs={"tok-a": "read",
                                                                         "tok-b": "write"}))
        assert srv.server.request_token("tok-a", "alice") == 1
        state = await repl.call("waitState", name="a", field="authenticatedEvents",
                                equals=["read-write", "readonly"])
        assert state["scope"] == "readonly" and state["tokenRequests"] == 2
        await repl.call("insert", name="a", text="refused;")
        await repl.call("waitState", name="a", field="unsynced", equals=1)

        # Revocation: tok-b becomes read-only for alice, then closed; bob is not affected.
        assert await srv.server.revoke("tok-b", "alice", "read") == 1
        await repl.call("waitState", name="b", field="scope", equals="readonly")
        assert await srv.server.revoke("tok-b", "alice", "none") == 1
        state = await repl.call("waitState", name="b", field="closes", length=1)
        assert state["failures"] == ["access revoked"]
        assert state["closes"] == [{"code": 1000, "reason": "access revoked"}]
        await repl.call("insert", name="b2", text="bob still writes;")
        await repl.call("waitUnsynced0", name="b2")
        assert "bob still writes;" in await server_text(srv, "tok-b")
        assert srv.server.get_connection_count(document_id="tok-a") == 1  # a's socket lives on


async def test_v2_without_a_token_uses_the_upgrades_credentials() -> None:
    """A v2 provider with no token sends no Auth: a token in the URL authenticates it; without
    one it is refused with a reason."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv, \
            hocuspocus_providers() as repl:
        await repl.call("open", name="with", url=f"{url(srv)}?token={token('carol')}",
                        doc="v2-doc", impl="v2")
        await repl.call("open", name="without", url=url(srv), doc="v2-doc", impl="v2")
        await repl.call("waitSynced", name="with")
        await repl.call("insert", name="with", text="v2 works;")
        await repl.call("waitUnsynced0", name="with")
        state = await repl.call("waitState", name="without", field="failures", length=1)
        assert state["failures"] == ["Unauthorized: no token"]
        assert await server_text(srv, "v2-doc") == "v2 works;"


async def test_detach_then_attach_resyncs() -> None:
    """A detached provider leaves the document (its presence goes, the socket stays); attached
    again it authenticates, syncs and sends what it wrote meanwhile."""
    async with running_server() as srv, hocuspocus_providers() as repl:
        await repl.call("socket", name="s", url=url(srv), impl="v4")
        await repl.call("open", name="a", socket="s", doc="da", impl="v4", token="")
        await repl.call("open", name="keep", socket="s", doc="db", impl="v4", token="")
        await repl.call("open", name="b", url=url(srv), doc="da", impl="v3", token="")
        await asyncio.gather(*(repl.call("waitSynced", name=n) for n in ("a", "keep", "b")))
        await repl.call("setAwareness", name="a", state={"user": {"name": "A"}})
        await repl.call("insert", name="a", text="before;")
        await repl.call("waitUntil", name="b", field="text", equals="before;")

        async def b_sees_a(present: bool) -> bool:
            states = (await repl.call("awareness", name="b"))["states"]
            return any(s and s.get("user", {}).get("name") == "A"
                       for s in states.values()) == present

        await until(lambda: b_sees_a(True), "A's presence")
        await repl.call("detach", name="a")
        await until(lambda: b_sees_a(False), "A's presence gone")
        assert srv.server.get_connection_count(document_id="da") == 1
        await repl.call("insert", name="a", text="offline;")
        await repl.call("insert", name="b", text="online;")
        await repl.call("attach", name="a")
        content = await converge(repl, ["a", "b"])
        assert "offline;" in content["text"] and "online;" in content["text"]
        await repl.call("insert", name="keep", text="untouched socket;")
        await repl.call("waitUnsynced0", name="keep")
        assert (await repl.call("socketStatus", socket="s"))["closes"] == []


async def test_session_awareness_two_providers_of_one_document_on_one_socket() -> None:
    """v4 providers with sessionAwareness open the same document twice on one socket; each
    gets its own address and both converge."""
    async with running_server() as srv, hocuspocus_providers() as repl:
        await repl.call("socket", name="s", url=url(srv), impl="v4")
        for name in ("p", "q"):
            await repl.call("open", name=name, socket="s", doc="twice", impl="v4", token="",
                            sessionAwareness=True)
        await asyncio.gather(repl.call("waitSynced", name="p"), repl.call("waitSynced", name="q"))
        await repl.call("insert", name="p", text="p;")
        await repl.call("insert", name="q", text="q;")
        content = await converge(repl, ["p", "q"])
        assert sorted(content["text"].split(";")[:2]) == ["p", "q"]
        assert srv.server.get_connection_count(document_id="twice") == 2


async def test_stateless_messages_hooks_and_api() -> None:
    """A provider's stateless message reaches the hook, which answers it; the server sends to
    every provider of a document, to one user's, and over the HTTP API."""
    hocuspocus_hooks.seen.clear()
    async with running_server(auth=f"{HOOKS}:authenticate", api_key="k",
                              stateless_hooks=(f"{HOOKS}:on_stateless",)) as srv, \
            hocuspocus_providers() as repl:
        await repl.call("open", name="ann", url=url(srv), doc="sl", impl="v4", token="ann")
        await repl.call("open", name="ben", url=url(srv), doc="sl", impl="v3", token="ben")
        await repl.call("open", name="old", url=f"{url(srv)}?x=1", doc="sl", impl="v2",
                        token="cy")
        for name in ("ann", "ben", "old"):
            await repl.call("waitSynced", name=name)
        await repl.call("sendStateless", name="ben", payload="ping")
        state = await repl.call("waitState", name="ben", field="stateless", length=1)
        assert state["stateless"] == ["pong:sl:ben"]
        assert hocuspocus_hooks.seen == [("sl", "ping", "ben")]

        assert srv.server.stateless.broadcast("sl", '{"event":"saved"}') == 3
        assert srv.server.stateless.send("sl", "for ann", user_id="ann") == 1
        async with httpx.AsyncClient(base_url=srv.http,
                                     headers={"Authorization": "Bearer k"}) as http:
            answer = await http.post("/api/v1/documents/sl/stateless",
                                     json={"payload": "over http", "userId": "cy"})
            assert answer.json() == {"documentId": "sl", "delivered": 1}
            refused = await http.post("/api/v1/documents/sl/stateless", json={"payload": {}})
            assert refused.status_code == 400
        ann = await repl.call("waitState", name="ann", field="stateless", length=2)
        assert ann["stateless"] == ['{"event":"saved"}', "for ann"]
        old = await repl.call("waitState", name="old", field="stateless", length=2)
        assert old["stateless"] == ['{"event":"saved"}', "over http"]
        assert (await repl.call("state", name="ben"))["stateless"] == [
            "pong:sl:ben", '{"event":"saved"}']


async def test_idle_sockets_are_kept_alive() -> None:
    """Providers close a socket that received nothing for messageReconnectTimeout: the server's
    keepalive (Ping for v4, a dropped frame for older) keeps idle sockets open; without it they
    close."""
    for keepalive, survives in ((0.3, True), (30.0, False)):
        async with running_server(hocuspocus_keepalive_s=keepalive) as srv, \
                hocuspocus_providers() as repl:
            for impl in ("v3", "v4"):
                await repl.call("socket", name=impl, url=url(srv), impl=impl,
                                messageReconnectTimeout=1500)
                await repl.call("open", name=impl, socket=impl, doc="idle", impl=impl,
                                token="", awareness=None)
                await repl.call("waitSynced", name=impl)

            async def no_close() -> bool:
                for impl in ("v3", "v4"):
                    if (await repl.call("socketStatus", socket=impl))["closes"]:
                        return False
                return True

            async def closed() -> bool:
                return not await no_close()

            if survives:  # open all along, for 5 s of idleness
                await stays(no_close, f"idle sockets with keepalive {keepalive}", seconds=5,
                            interval=0.2)
            else:  # closed by the providers within 5 s of silence
                await eventually(closed, "idle sockets to close without keepalive", timeout=5,
                                 interval=0.2)
            if survives:
                assert srv.server.stats.messages_in.get("pong", 0) > 0  # v4 answered Pings


async def test_socket_without_documents_closes_after_the_deadline() -> None:
    """A socket that authenticates no document is closed with 4408 after the deadline."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with running_server(hocuspocus_auth_deadline_s=0.5, hocuspocus_keepalive_s=0.2) as srv:
        async with connect(url(srv)) as ws:
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                pass
            assert ws.close_code == 4408
        # An authenticated one stays past the deadline.
        async with connect(url(srv)) as ws:
            encoder = FrameEncoder("kept")
            await ws.send(encoder.prefix + b"\x02\x00\x00")  # Token ""
            assert (await asyncio.wait_for(ws.recv(), 5)) == encoder.authenticated(False)
            started = time.monotonic()
            while time.monotonic() - started < 1.5:
                frame = await asyncio.wait_for(ws.recv(), 5)
                assert frame in (b"\x00\x01\x01\x00",), frame  # keepalives only


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
