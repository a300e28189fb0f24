"""The ProseMirror step authority, driven by real npm prosemirror-collab editors, and the
bridge that applies server steps to Yjs documents (checked with y-prosemirror itself)."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import weakref
from typing import Any

import httpx
from prosemirror.model import Node
from pycrdt import XmlFragment

from captify_ws.rooms.steps import apply_steps, default_schema
from tests.helpers import (
    ProviderRepl,
    ServerProcess,
    editors,
    json_client,
    providers,
    running_server,
)
from tests.polling import eventually
from tests.services import REDIS_URL, fresh_database, require_redis

AUTH = {"Authorization": "Bearer k"}


def insert_step(pos: int, text: str) -> dict[str, Any]:
    return {"stepType": "replace", "from": pos, "to": pos,
            "slice": {"content": [{"type": "text", "text": text}]}}


async def converged(repl: ProviderRepl, names: list[str], timeout: float = 20) -> dict[str, Any]:
    async def same() -> dict[str, Any]:
        for name in names:
            await repl.call("waitIdle", name=name, timeout=int(timeout * 1000))
        states = [await repl.call("state", name=name) for name in names]
        assert all(s["doc"] == states[0]["doc"] and s["version"] == states[0]["version"]
                   for s in states), [s["text"] for s in states]
        return dict(states[0])

    state: dict[str, Any] = await eventually(same, "the editors to converge", timeout,
                                             interval=0.05)
    return state


async def test_three_editors_typing_concurrently_converge(transport: str) -> None:
    """3 prosemirror-collab editors type at once; all end with the server's document."""
    async with running_server(transport, api_key="k") as srv, editors() as repl:
        names = ["e1", "e2", "e3"]
        for name in names:
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="pm-doc")
        await asyncio.gather(*(repl.call("typeRandom", name=n, count=25, seed=i + 1,
                                         delayMs=3) for i, n in enumerate(names)))
        final = await converged(repl, names)
        assert final["version"] > 0
        for name in names:  # every editor's last word is there
            assert f"{name}24 " in final["text"]
        room = srv.server.rooms.get("pm-doc")
        assert room is not None and room.steps is not None
        assert room.steps.doc.to_json() == final["doc"]
        assert room.steps.version == final["version"]
        # a late joiner loads the same document at the same version
        await repl.call("open", name="late", url=f"{srv.ws}/ws/fabric", doc="pm-doc")
        late = await repl.call("state", name="late")
        assert (late["doc"], late["version"]) == (final["doc"], final["version"])


async def test_stale_client_gets_the_missing_steps_and_nothing_is_applied() -> None:
    """steps for an old version: the sender gets the steps since, nothing is applied."""
    async with running_server() as srv, json_client(srv, "stale", "old") as client:
        await client.send({"type": "steps", "documentId": "stale", "data": {
            "version": 0, "steps": [insert_step(1, "first")], "clientID": "old"}})
        accepted = await client.expect("steps")
        assert accepted["data"] == {"version": 0, "steps": [insert_step(1, "first")],
                                    "clientIDs": ["old"]}
        await client.send({"type": "steps", "documentId": "stale", "data": {
            "version": 0, "steps": [insert_step(1, "late")], "clientID": "old"}})
        behind = await client.expect("steps")
        assert behind["data"] == {"version": 0, "steps": [insert_step(1, "first")],
                                  "clientIDs": ["old"]}
        await client.send({"type": "doc", "documentId": "stale"})
        doc = await client.expect("doc")
        assert doc["data"]["version"] == 1
        assert "late" not in json.dumps(doc["data"]["doc"])
        await client.send({"type": "steps-since", "documentId": "stale",
                           "data": {"version": 0}})
        assert (await client.expect("steps"))["data"]["steps"] == [insert_step(1, "first")]


async def test_stale_real_editor_catches_up_and_rebases() -> None:
    """A real editor that typed offline sends old-version steps, catches up, rebases, and
    its text lands after the others'."""
    async with running_server() as srv, editors() as repl:
        await repl.call("open", name="a", url=f"{srv.ws}/ws/fabric", doc="rebase")
        await repl.call("open", name="b", url=f"{srv.ws}/ws/fabric", doc="rebase")
        await repl.call("insert", name="a", text="from-a ")
        await repl.call("waitIdle", name="a")
        stale = await repl.call("state", name="b")
        await repl.call("stale", name="b", version=0, steps=[insert_step(1, "stale ")])
        final = await converged(repl, ["a", "b"])
        assert "from-a" in final["text"]
        assert stale["version"] <= final["version"]


async def test_invalid_steps_are_refused() -> None:
    """Steps that do not apply (or are not steps) → error invalid_steps; nothing changes."""
    async with running_server() as srv, json_client(srv, "bad-steps", "c") as client:
        for steps in ([insert_step(500, "x")], [{"stepType": "teleport"}],
                      [{"stepType": "replace", "from": 0, "to": 1}]):
            await client.send({"type": "steps", "documentId": "bad-steps", "data": {
                "version": 0, "steps": steps, "clientID": "c"}})
            error = await client.expect("error")
            assert error["data"]["code"] == "invalid_steps", error
        await client.send({"type": "steps", "documentId": "bad-steps",
                           "data": {"version": 0}})
        assert "data.steps" in (await client.expect("error"))["message"]
        await client.send({"type": "doc", "documentId": "bad-steps"})
        assert (await client.expect("doc"))["data"]["version"] == 0


async def test_history_trimmed_sends_the_client_to_doc() -> None:
    """steps-since a version no longer kept → error history_trimmed with the version."""
    async with running_server() as srv, json_client(srv, "trim", "c") as client:
        await client.send({"type": "doc", "documentId": "trim"})
        await client.expect("doc")
        room = srv.server.rooms.get("trim")
        assert room is not None and room.steps is not None
        room.steps.history_start = 5  # as if the log had been trimmed
        room.steps.version = 7
        await client.send({"type": "steps-since", "documentId": "trim",
                           "data": {"version": 2}})
        error = await client.expect("error")
        assert error["data"] == {"code": "history_trimmed", "version": 7}


async def test_server_steps_interleave_with_client_steps(transport: str) -> None:
    """broadcast_steps while editors type: everyone converges and the server's insert is
    there once, even when the call is retried with the same change id."""
    async with running_server(transport, api_key="k") as srv, editors() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        names = ["e1", "e2"]
        for name in names:
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="mixed-steps")
        typing = asyncio.gather(*(repl.call("typeRandom", name=n, count=20, seed=i + 7,
                                            delayMs=5) for i, n in enumerate(names)))
        url = f"{srv.http}/api/v1/documents/mixed-steps/steps"
        for index in range(5):
            for _ in range(2):  # a retried call is applied once
                answer = await http.post(url, headers=AUTH, json={
                    "steps": [insert_step(1, f"[agent{index}] ")], "changeId": f"agent-{index}"})
                assert answer.status_code == 200, answer.text
            await asyncio.sleep(0.02)
        await typing
        final = await converged(repl, names)
        for index in range(5):
            assert final["text"].count(f"[agent{index}] ") == 1
        for name in names:
            assert all(final["text"].count(f"{name}{i} ") == 1 for i in range(20))


async def test_steps_survive_a_restart(tmp_path: Any) -> None:
    """The step log and the document are stored: after a restart editors load them."""
    store = f"sqlite:///{tmp_path}/steps.db"
    server = ServerProcess(["--port", "0", "--store", store]).start()
    try:
        async with editors() as repl:
            await repl.call("open", name="a", url=f"{server.ws}/ws/fabric", doc="kept")
            await repl.call("typeRandom", name="a", count=30, seed=3)
            before = await converged(repl, ["a"])
    finally:
        server.stop()
    server = ServerProcess(["--port", "0", "--store", store]).start()
    try:
        async with editors() as repl:
            await repl.call("open", name="b", url=f"{server.ws}/ws/fabric", doc="kept")
            after = await repl.call("state", name="b")
            assert (after["doc"], after["version"]) == (before["doc"], before["version"])
    finally:
        server.stop()


async def test_editors_on_two_instances_share_one_authority() -> None:
    """Editors on two instances (Redis + PostgreSQL) converge on one versioned log; the
    compare-and-append in PostgreSQL never lets two steps take one version."""
    require_redis()
    prefix = f"test-{secrets.token_hex(4)}"
    with fresh_database() as db:
        args = ["--port", "0", "--store", db, "--broker", REDIS_URL, "--broker-prefix",
                prefix, "--room-grace-s", "30"]
        a, b = ServerProcess(args).start(), ServerProcess(args).start()
        try:
            async with editors() as repl:
                await repl.call("open", name="on-a", url=f"{a.ws}/ws/fabric", doc="two")
                await repl.call("open", name="on-b", url=f"{b.ws}/ws/fabric", doc="two")
                await asyncio.gather(
                    repl.call("typeRandom", name="on-a", count=30, seed=1, delayMs=4),
                    repl.call("typeRandom", name="on-b", count=30, seed=2, delayMs=4))
                final = await converged(repl, ["on-a", "on-b"], timeout=30)
                assert "on-a29 " in final["text"] and "on-b29 " in final["text"]
        finally:
            a.stop()
            b.stop()
        import asyncpg

        conn = await asyncpg.connect(db)
        try:
            versions = [r["version"] for r in await conn.fetch(
                "SELECT version FROM captify_steps WHERE document_id = 'two' ORDER BY version")]
        finally:
            await conn.close()
        assert versions == list(range(final["version"]))


async def test_server_steps_reach_yjs_editors() -> None:
    """broadcast_steps on a document edited through y-prosemirror: the steps reach the
    Y.XmlFragment, and y-prosemirror's own yXmlFragmentToProsemirrorJSON shows them; edits
    the Yjs editors made meanwhile are kept."""
    schema = default_schema()
    initial = {"type": "doc", "content": [
        {"type": "heading", "attrs": {"level": 1}, "content": [{"type": "text", "text": "Plan"}]},
        {"type": "paragraph", "content": [
            {"type": "text", "text": "Ship "},
            {"type": "text", "marks": [{"type": "strong"}], "text": "it"}]}]}
    async with running_server(api_key="k") as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10) as http:
        await repl.call("open", name="tiptap", url=f"{srv.ws}/ws/fabric", doc="yjs-doc")
        await repl.call("waitSynced", name="tiptap")
        await repl.call("pmInit", name="tiptap", doc=initial)

        def server_fragment() -> str:
            room = srv.server.rooms.get("yjs-doc")
            return "" if room is None else str(
                room.doc.get(srv.server.settings.pm_fragment, type=XmlFragment))

        await eventually(lambda: "Ship" in server_fragment(), "the editor's content on the server")
        # An agent inserts a word at the start of the paragraph (position 7: after
        # "<h1>Plan</h1>" = 6, +1 into the paragraph).
        answer = await http.post(f"{srv.http}/api/v1/documents/yjs-doc/steps", headers=AUTH,
                                 json={"steps": [insert_step(7, "Please ")],
                                       "changeId": "agent-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["yjs"] is True
        expected = Node.from_json(schema, {"type": "doc", "content": [
            initial["content"][0],
            {"type": "paragraph", "content": [
                {"type": "text", "text": "Please Ship "},
                {"type": "text", "marks": [{"type": "strong"}], "text": "it"}]}]})
        async def shows_expected() -> bool:
            seen = (await repl.call("pmJSON", name="tiptap"))["doc"]
            assert Node.from_json(schema, seen).eq(expected), seen
            return True

        await eventually(shows_expected, "the server's steps in the editor", timeout=5,
                         interval=0.05)
        # The Yjs editor types; the next server step applies on top of that text.
        await repl.call("pmType", name="tiptap", block=0, index=4, text="!")
        await eventually(lambda: "Plan!" in server_fragment(), "the typed '!' on the server")
        answer = await http.post(f"{srv.http}/api/v1/documents/yjs-doc/steps", headers=AUTH,
                                 json={"steps": [insert_step(1, ">> ")],
                                       "changeId": "agent-2"})
        assert answer.status_code == 200, answer.text
        async def heading_rebased() -> dict[str, Any]:
            seen: dict[str, Any] = (await repl.call("pmJSON", name="tiptap"))["doc"]
            heading = "".join(t["text"] for t in seen["content"][0]["content"])
            assert heading == ">> Plan!", seen
            return seen

        seen = await eventually(heading_rebased, "the step on top of the typed text",
                                timeout=5, interval=0.05)
        assert seen["content"][1]["content"][1]["marks"][0]["type"] == "strong"


def test_documents_steps_were_applied_to_are_freed() -> None:
    """Every version of a document that steps were applied to is freed once nothing uses it
    (issue 13.6: the prosemirror port's cache of resolved positions held each one, so 30 steps
    of 1 MB kept 250 MB after the document was unloaded)."""
    schema = default_schema()
    doc = Node.from_json(schema, {"type": "doc", "content": [{"type": "paragraph"}]})
    versions = [weakref.ref(doc)]
    for number in range(5):
        doc = apply_steps(schema, doc, [insert_step(1, f"piece {number} ")])
        versions.append(weakref.ref(doc))
    assert doc.text_content.startswith("piece 4 ")
    del doc
    gc.collect()
    assert [version() for version in versions] == [None] * 6
