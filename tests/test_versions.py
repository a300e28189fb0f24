"""Versions: automatic and named, content and diff, restore as a forward change (real npm
y-websocket providers, a fresh joiner, a restart on the same SQLite file), bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from captify_ws.history.content import contents, restore_update
from captify_ws.store import store_from_url
from tests.helpers import ProviderRepl, json_client, providers, running_server
from tests.polling import eventually

KEY = {"Authorization": "Bearer k"}
T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                timeout: float = 10.0) -> T:
    """``probe()``'s value once ``ok`` holds for it (tests/polling.py's deadline-bound poll)."""
    async def check() -> tuple[T] | None:
        value = await probe()
        return (value,) if ok(value) else None
    found = await eventually(check, "the expected value", timeout=timeout)
    return found[0]


async def _snapshots(repl: ProviderRepl, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        snap = await repl.call("snapshot", name=name)
        out.append({key: snap[key] for key in ("text", "map", "xml")})
    return out


async def _converged(repl: ProviderRepl, names: list[str]) -> dict[str, Any]:
    snaps = await until(lambda: _snapshots(repl, names),
                             lambda s: all(x == s[0] for x in s))
    return snaps[0]


async def _open(repl: ProviderRepl, url: str, name: str) -> None:
    await repl.call("open", name=name, url=f"{url}/ws/fabric", doc="story")
    await repl.call("waitSynced", name=name)


async def test_restore_reaches_every_client_a_joiner_and_a_restart(tmp_path: Path) -> None:
    """Three y-websocket clients edit text, map and XML; a version is taken; they edit on; a
    restore brings all three, a fresh joiner and a restarted server to the versioned content
    and nothing else; restoring the version before the restore undoes it."""
    url = f"sqlite:///{tmp_path}/story.db"
    trio = ["a", "b", "c"]
    async with providers() as repl:
        async with running_server(api_key="k", store=store_from_url(url),
                                  version_idle_s=60) as srv, \
                httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=30) as http:
            for name in trio:
                await _open(repl, srv.ws, name)
            for seed, name in enumerate(trio, 1):
                await repl.call("randomEdits", name=name, count=40, seed=seed)
            versioned = await _converged(repl, trio)
            created = await http.post("/api/v1/documents/story/versions", json={"name": "v1"})
            assert created.status_code == 201, created.text
            assert created.json()["who"] == ["anonymous", "api"]
            for seed, name in enumerate(trio, 10):
                await repl.call("randomEdits", name=name, count=40, seed=seed)
            edited = await _converged(repl, trio)
            assert edited != versioned
            restored = await http.post("/api/v1/documents/story/versions/1/restore")
            assert restored.status_code == 201, restored.text
            assert restored.json()["kind"] == "restore"
            assert await _converged(repl, trio) == versioned
            await _open(repl, srv.ws, "joiner")
            assert (await _snapshots(repl, ["joiner"]))[0] == versioned
            listed = (await http.get("/api/v1/documents/story/versions")).json()["versions"]
            assert [v["kind"] for v in listed] == ["restore", "auto", "named"]
            for name in [*trio, "joiner"]:
                await repl.call("close", name=name)
        async with running_server(api_key="k", store=store_from_url(url),
                                  version_idle_s=60) as srv, \
                httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=30) as http:
            await _open(repl, srv.ws, "after-restart")
            assert (await _snapshots(repl, ["after-restart"]))[0] == versioned
            undo = await http.post(f"/api/v1/documents/story/versions/"
                                   f"{restored.json()['version'] - 1}/restore")
            assert undo.status_code == 201, undo.text
            assert await _converged(repl, ["after-restart"]) == edited
            await _open(repl, srv.ws, "late")
            assert (await _snapshots(repl, ["late"]))[0] == edited


async def test_version_content_and_diff_of_text_and_prosemirror() -> None:
    """GET of a version gives its Yjs update, text and ProseMirror JSON; the diff lists what
    was inserted and deleted, and who changed the document in between."""
    async with running_server(api_key="k", version_idle_s=60) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY) as http:
        server = srv.server
        doc: Doc[Any] = Doc()
        text = doc.get("text", type=Text)
        fragment = doc.get("prosemirror", type=XmlFragment)
        text += "hello brave world"
        fragment.children.append(XmlElement("paragraph", {}, [XmlText("first")]))
        await server.apply_update("notes", doc.get_update())
        first = await server.history.create_version("notes", "one", who="user:ann")
        before = doc.get_state()
        del text[6:12]
        text.insert(len(text), "!")
        fragment.children.append(XmlElement("paragraph", {}, [XmlText("second")]))
        await server.apply_update("notes", doc.get_update(before))
        second = await server.history.create_version("notes", who="user:bob")
        got = (await http.get("/api/v1/documents/notes/versions/1")).json()
        assert got["text"] == {"text": "hello brave world"}
        assert got["prosemirror"]["prosemirror"]["content"][0]["content"][0]["text"] == "first"
        assert got["name"] == "one" and got["who"] == ["server", "user:ann"]
        diff = (await http.get("/api/v1/documents/notes/diff",
                               params={"from": first.number, "to": second.number})).json()
        assert diff["authors"] == ["server", "user:bob"]
        assert diff["text"]["text"] == [{"op": "delete", "at": 6, "text": "brave "},
                                        {"op": "insert", "at": 17, "text": "!"}]
        assert diff["prosemirror"]["prosemirror"] == [{"op": "insert", "index": 1, "nodes": [
            {"type": "paragraph", "content": [{"type": "text", "text": "second"}]}]}]


async def test_automatic_versions_when_idle_and_during_long_editing() -> None:
    """An edit then silence gives one automatic version; editing without pause gives one at
    least every version_max_interval_s."""
    async with running_server(api_key="k", version_idle_s=0.3,
                              version_max_interval_s=0.8) as srv, \
            json_client(srv, "auto") as client:
        history = srv.server.history
        await client.edit("x")
        listed = await until(lambda: history.list_versions("auto"), lambda v: len(v) == 1)
        assert listed[0].kind == "auto" and listed[0].who == ("anonymous",)
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            await client.edit("y")
            await asyncio.sleep(0.1)
        during = [v for v in await history.list_versions("auto") if v.number > 1]
        assert len(during) >= 2


async def test_bad_input_is_a_clear_error() -> None:
    """Unknown versions and documents answer 404, a deleted document's restore 404, bad
    parameters and bodies 400, nothing changes."""
    async with running_server(api_key="k", version_idle_s=60) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY) as http:
        async with json_client(srv, "doc") as client:
            await client.edit("kept")
            await client.sync()
        assert (await http.post("/api/v1/documents/doc/versions")).status_code == 201
        cases = [
            ("GET", "/api/v1/documents/doc/versions/7", None, 404, "no version 7"),
            ("POST", "/api/v1/documents/doc/versions/7/restore", None, 404, "no version 7"),
            ("POST", "/api/v1/documents/never/versions", None, 404, "no document"),
            ("GET", "/api/v1/documents/doc/diff?from=1", None, 400, "?from=<n>&to=<n>"),
            ("GET", "/api/v1/documents/doc/versions?limit=0", None, 400, "'limit'"),
            ("POST", "/api/v1/documents/doc/versions", {"name": "x" * 201}, 400, "'name'"),
            ("POST", "/api/v1/documents/doc/versions", [1], 400, "an object"),
        ]
        for method, path, body, status, message in cases:
            response = await http.request(method, path, json=body)
            assert response.status_code == status, (path, response.text)
            assert message in response.json()["error"], (path, response.text)
        bad_json = await http.post("/api/v1/documents/doc/versions", content=b"{nope")
        assert bad_json.status_code == 400
        assert (await http.delete("/api/v1/documents/doc")).status_code == 200
        gone = await http.post("/api/v1/documents/doc/versions/1/restore")
        assert gone.status_code == 404
        assert await srv.server.store.load("doc") is None


def _edit(doc: Doc[Any], rng: Any, step: int) -> None:
    text = doc.get("text", type=Text)
    choice = rng.random()
    if choice < 0.4:
        text.insert(rng.randrange(len(text) + 1), f"w{step}")
    elif choice < 0.55 and len(text):
        at = rng.randrange(len(text))
        del text[at:min(len(text), at + rng.randrange(1, 4))]
    elif choice < 0.7:
        doc.get("map", type=Map)[f"k{rng.randrange(4)}"] = step
    elif choice < 0.8:
        doc.get("list", type=Array).append(step)
    else:
        fragment = doc.get("xml", type=XmlFragment)
        if len(fragment.children) and rng.random() < 0.3:
            del fragment.children[0]
        else:
            fragment.children.append(XmlElement("p", {}, [XmlText(f"p{step}")]))


def _visible(state: bytes) -> Any:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return (str(doc.get("text", type=Text)), doc.get("map", type=Map).to_py(),
            doc.get("list", type=Array).to_py(), str(doc.get("xml", type=XmlFragment)))


@pytest.mark.unit
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 25), st.integers(0, 25))
def test_restore_update_returns_any_edited_document_to_its_version(rng: Any, before: int,
                                                                   after: int) -> None:
    """Two clients edit text, map, array and XML; whatever they do after a version, the
    restore update brings a third copy back to the version's content, and it stays an
    ordinary Yjs update (the clients converge when they apply it)."""
    alice: Doc[Any] = Doc()
    bob: Doc[Any] = Doc()
    for step in range(before):
        _edit(alice if step % 2 else bob, rng, step)
    alice.apply_update(bob.get_update())
    bob.apply_update(alice.get_update())
    version = alice.get_update()
    for step in range(before, before + after):
        _edit(alice if step % 2 else bob, rng, step)
    alice.apply_update(bob.get_update())
    bob.apply_update(alice.get_update())
    update = restore_update(version, alice.get_update())
    alice.apply_update(update)
    bob.apply_update(update)
    assert _visible(alice.get_update()) == _visible(version)
    assert _visible(bob.get_update()) == _visible(version)
    assert contents(alice.get_update()) == contents(version)


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_retention_keeps_the_newest_automatic_versions(tmp_path: Path,
                                                            store_kind: str) -> None:
    """With version_keep=2, older automatic versions go; named ones stay."""
    store = store_from_url(f"sqlite:///{tmp_path}/r.db")
    async with running_server(store=store, version_idle_s=0.1, version_keep=2) as srv, \
            json_client(srv, "kept") as client:
        history = srv.server.history
        await client.edit("a")
        await until(lambda: history.list_versions("kept"), lambda v: len(v) == 1)
        await history.create_version("kept", "named")
        for index in range(3):
            await client.edit(str(index))
            await until(lambda: history.list_versions("kept"),
                             lambda v, n=index: v[0].number == 3 + n)
        kinds = [(v.number, v.kind) for v in await history.list_versions("kept")]
        assert kinds == [(5, "auto"), (4, "auto"), (2, "named")]


async def test_diff_says_who_typed_what() -> None:
    """Two writers (labelled like principals) type into one text; the diff's insertedBy gives
    each one's text, and a store round trip keeps the Yjs clients of each version."""
    from captify_ws.rooms.member import Origin

    async with running_server(api_key="k", version_idle_s=60) as srv:
        server = srv.server
        ann: Doc[Any] = Doc()
        ann.get("text", type=Text).insert(0, "base ")
        await server.apply_update("shared", ann.get_update())
        first = await server.history.create_version("shared")
        bob: Doc[Any] = Doc()
        bob.apply_update(ann.get_update())
        before_ann, before_bob = ann.get_state(), bob.get_state()
        ann.get("text", type=Text).insert(5, "from ann ")
        bob.get("text", type=Text).insert(0, "bob says ")
        async with server.rooms.hold("shared") as room:
            room.apply_update(ann.get_update(before_ann), Origin("server", label="user:ann"))
            room.apply_update(bob.get_update(before_bob), Origin("server", label="user:bob"))
        await server.writer.flush()
        second = await server.history.create_version("shared")
        assert set(second.clients.values()) == {"user:ann", "user:bob"}
        stored = await server.history.list_versions("shared")
        assert stored[0].clients == second.clients
        diff = await server.history.diff("shared", first.number, second.number)
        assert diff["insertedBy"] == {"user:ann": {"text": ["from ann "]},
                                      "user:bob": {"text": ["bob says "]}}
        assert diff["authors"] == ["server", "user:ann", "user:bob"]


async def test_named_versions_attribute_text_with_automatic_versions_off() -> None:
    """With version_idle_s=0 no automatic version is taken, and a named version still names
    who typed what."""
    from captify_ws.rooms.member import Origin

    async with running_server(version_idle_s=0) as srv:
        history = srv.server.history
        doc: Doc[Any] = Doc()
        doc.get("text", type=Text).insert(0, "start ")
        await srv.server.apply_update("plain", doc.get_update())
        first = await history.create_version("plain")
        before = doc.get_state()
        doc.get("text", type=Text).insert(6, "by eve")
        async with srv.server.rooms.hold("plain") as room:
            room.apply_update(doc.get_update(before), Origin("server", label="user:eve"))
        await srv.server.writer.flush()
        second = await history.create_version("plain")
        assert [v.kind for v in await history.list_versions("plain")] == ["named", "named"]
        diff = await history.diff("plain", first.number, second.number)
        assert diff["insertedBy"] == {"user:eve": {"text": ["by eve"]}}
