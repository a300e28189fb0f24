"""An agent co-editing a document with people on real y-websocket providers: contiguous
streamed text at a relative position, a caret they see move and leave, attribution by Yjs
client id, revert as a forward change, the stale-context guard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import captify_ws
from captify_ws.agents.session import StaleContext
from tests.helpers import ProviderRepl, json_client, providers, running_server
from tests.polling import eventually, stays


async def _converged(repl: ProviderRepl, names: list[str], timeout: float = 20.0) -> str:
    async def same() -> str | None:
        texts = [(await repl.call("snapshot", name=name))["text"] for name in names]
        assert all(text == texts[0] for text in texts), f"not converged: {texts}"
        return str(texts[0])

    text: str = await eventually(same, "the providers to converge", timeout, interval=0.05)
    return text


async def test_an_agent_streams_2000_chars_while_two_people_type_around_it() -> None:
    """Two y-websocket clients type before and after the anchor while the agent streams
    2,000 characters: all converge, the agent's text is contiguous, they saw its caret move
    and saw it leave; revert() removes exactly its text; the session is listed."""
    async with running_server(api_key="k") as srv, providers() as repl:
        for name in ("alice", "bob"):
            await repl.call("open", name=name, url=f"{srv.ws}/ws/fabric", doc="co-doc")
            await repl.call("waitSynced", name=name)
        await repl.call("insert", name="alice", index=0, text="[start][end]")
        await _converged(repl, ["alice", "bob"])
        agent_text = "".join(f"<{i:04d}>" for i in range(334))[:2000]
        async with captify_ws.agent_session("co-doc", name="Assistant",
                                            color="#7c3aed") as agent:
            async def agent_seen() -> bool:
                seen = (await repl.call("awarenessSeen", name="bob"))["seen"]
                return any(s["id"] == agent.client_id for s in seen)

            await eventually(agent_seen, "the agent's presence at bob", interval=0.05)
            people = asyncio.gather(
                repl.call("insertTokens", name="alice", count=40, seed=1, delayMs=5),
                repl.call("insert", name="bob", index=0, text="B0;"))

            async def model() -> AsyncIterator[str]:  # a model streaming 20-char pieces
                for start in range(0, len(agent_text), 20):
                    yield agent_text[start:start + 20]
                    await asyncio.sleep(0.01)
            await agent.insert_text(7, model())  # between the markers
            await people
            for i in range(20):
                await repl.call("insert", name="bob", index=0, text=f"b{i};")
            text = await _converged(repl, ["alice", "bob"])
            assert agent_text in text, "the agent's text is contiguous"
            assert agent.read() == text
            assert text.index(agent_text) > text.index("[start]")
            client_id = agent.client_id
            await repl.call("insertTokens", name="bob", count=10, seed=2)
            before_revert = await _converged(repl, ["alice", "bob"])
            await agent.revert()
            reverted = await _converged(repl, ["alice", "bob"])
            assert reverted == before_revert.replace(agent_text, "", 1)
            assert "[start]" in reverted and "[end]" in reverted
        seen = (await repl.call("awarenessSeen", name="bob"))["seen"]
        carets = [s["caret"] for s in seen if s["id"] == client_id and s.get("caret")]
        assert len(set(carets)) >= 10 and carets == sorted(carets), "the caret moved forward"
        assert any(s["id"] == client_id and s.get("name") == "Assistant" for s in seen)
        async def agent_left() -> bool:
            return any(s["id"] == client_id and s.get("removed")
                       for s in (await repl.call("awarenessSeen", name="bob"))["seen"])

        await eventually(agent_left, "the agent's presence to leave", interval=0.05)
        async with httpx.AsyncClient(timeout=10) as http:
            listed = (await http.get(f"{srv.http}/api/v1/agent/sessions?document_id=co-doc",
                                     headers={"Authorization": "Bearer k"})).json()
        assert [(a["name"], a["client_id"]) for a in listed["agents"]] == [
            ("Assistant", client_id)]
        assert listed["agents"][0]["ended_at"] is not None

        assert listed["agents"][0]["reverted"] is True


async def test_replace_is_refused_on_stale_context_and_revert_restores_deletes() -> None:
    """A range read before a person changed it is refused (nothing changes); a fresh one is
    replaced, and revert() puts the person's text back and removes the agent's."""
    async with running_server() as srv, providers() as repl:
        await repl.call("open", name="p", url=f"{srv.ws}/ws/fabric", doc="stale-doc")
        await repl.call("waitSynced", name="p")
        await repl.call("insert", name="p", index=0, text="The cat sat.")
        async with captify_ws.agent_session("stale-doc") as agent:
            await eventually(lambda: agent.read() == "The cat sat.", "the provider's text")
            stale = agent.range(4, 7)
            await repl.call("insert", name="p", index=5, text="h")  # "The chat sat."
            await eventually(lambda: agent.read() == "The chat sat.", "the provider's edit")
            with pytest.raises(StaleContext):
                await agent.replace(stale, "dog")
            await repl.call("insert", name="p", index=0, text=">> ")
            fresh = agent.range(7, 11)
            assert fresh.text == "chat"
            await repl.call("insert", name="p", index=0, text="!")  # rebased, still "chat"
            await eventually(lambda: agent.read() == "!>> The chat sat.", "the rebase")
            await agent.replace(fresh, "dog")
            async def provider_text(expected: str) -> bool:
                return bool((await repl.call("snapshot", name="p"))["text"] == expected)

            await eventually(lambda: provider_text("!>> The dog sat."), "the replace")
            await agent.revert()
            await eventually(lambda: provider_text("!>> The chat sat."),
                             "revert to restore the text")


async def test_the_same_over_http_for_other_languages() -> None:
    """Start, insert, a stale replace (409, nothing changes), a good replace, revert, end:
    a y-websocket provider sees each; bad requests get clear 400s."""
    async with running_server(api_key="k") as srv, providers() as repl, \
            httpx.AsyncClient(timeout=10, headers={"Authorization": "Bearer k"}) as http:
        await repl.call("open", name="p", url=f"{srv.ws}/ws/fabric", doc="http-doc")
        await repl.call("waitSynced", name="p")
        await repl.call("insert", name="p", index=0, text="Hello world")
        base = f"{srv.http}/api/v1/agent/sessions"
        deadline = time.monotonic() + 10
        while True:  # the server has the person's text
            opened = (await http.post(base, json={"document_id": "http-doc",
                                                  "name": "Bot"})).json()
            sid = opened["session_id"]
            if (await http.get(f"{base}/{sid}/text")).json()["text"] == "Hello world":
                break
            await http.delete(f"{base}/{sid}")
            assert time.monotonic() < deadline
        async with json_client(srv, "http-doc") as person:  # a JSON client sees a person
            seen = await person.expect("awareness", where=lambda m: (m.get("data") or {})
                                       .get("user", {}).get("name") == "Bot")
            assert seen["data"]["agent"] is True and seen["clientID"] == str(
                opened["client_id"])
        inserted = await http.post(f"{base}/{sid}/insert", json={"anchor": 5, "text": ","})
        assert inserted.json() == {"inserted": 1, "length": 12}
        await repl.call("waitUntil", name="p", field="text", equals="Hello, world")
        stale = await http.post(f"{base}/{sid}/replace",
                                json={"start": 7, "end": 12, "expect": "earth", "content": "x"})
        assert stale.status_code == 409 and "'world'" in stale.json()["error"]
        good = await http.post(f"{base}/{sid}/replace",
                               json={"start": 7, "end": 12, "expect": "world",
                                     "content": "there"})
        assert good.status_code == 200
        await repl.call("waitUntil", name="p", field="text", equals="Hello, there")
        await http.post(f"{base}/{sid}/revert")
        await repl.call("waitUntil", name="p", field="text", equals="Hello world")
        for path, body, text in [
                ("/insert", {"anchor": -1, "text": "x"}, "character position"),
                ("/insert", {"anchor": 0, "text": 5}, "'text' must be a string"),
                ("/replace", {"start": 0}, "'end' must be")]:
            bad = await http.post(f"{base}/{sid}{path}", json=body)
            assert bad.status_code == 400 and text in bad.json()["error"], bad.text
        assert (await http.delete(f"{base}/{sid}")).json() == {"ended": True}
        gone = await http.post(f"{base}/{sid}/insert", json={"anchor": 0, "text": "x"})
        assert gone.status_code == 404 and "unknown agent session" in gone.json()["error"]
        assert (await repl.call("snapshot", name="p"))["text"] == "Hello world"


async def test_revert_puts_back_only_what_others_wrote() -> None:
    """A replace across a person's text and the agent's own: revert restores the person's
    part only and removes all of the agent's, leaving the document as before the session
    (which was stored as a version when it started)."""
    async with running_server() as srv:
        async with captify_ws.agent_session("mixed", name="Person stand-in") as person:
            await person.insert_text(0, "hello world")
        async with captify_ws.agent_session("mixed") as agent:
            assert agent.before != b"" and agent.info.before_version is not None
            kept = await srv.server.history.version_content("mixed", agent.info.before_version)
            assert kept["text"]["text"] == "hello world", kept
            await agent.insert_text(5, " agent text")
            assert agent.read() == "hello agent text world"
            await agent.replace(agent.range(3, 10), "XY")  # "lo agen" → "XY"
            assert agent.read() == "helXYt text world"
            await agent.revert()
            assert agent.read() == "hello world"


async def test_prosemirror_steps_go_through_the_step_authority() -> None:
    """An agent's steps computed against the current version reach the prosemirror-collab
    editors; steps against an older version are refused (StaleVersion), nothing applied."""
    from tests.helpers import editors

    async with running_server() as srv, editors() as repl:
        await repl.call("open", name="e", url=f"{srv.ws}/ws/fabric", doc="pm-agent")
        await repl.call("typeRandom", name="e", count=5, seed=4)
        await repl.call("waitIdle", name="e", timeout=10000)
        async with captify_ws.agent_session("pm-agent") as agent:
            room = srv.server.rooms.get("pm-agent")
            assert room is not None
            version = (await srv.server.rooms.authority(room)).version
            step = {"stepType": "replace", "from": 1, "to": 1,
                    "slice": {"content": [{"type": "text", "text": "[agent] "}]}}
            result = await agent.apply_steps([step], version)
            assert result.applied
            with pytest.raises(captify_ws.errors.StaleVersion):
                await agent.apply_steps([step], version)
        async def editor_has_steps() -> bool:
            return bool((await repl.call("state", name="e"))["text"].count("[agent] ") == 1)

        await eventually(editor_has_steps, "the agent's steps in the editor", interval=0.05)


async def test_an_idle_agent_keeps_its_presence_by_renewing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """States nobody renews are dropped (30 s in y-protocols; 1 s here): an idle agent renews
    its own, so it stays present until its session ends."""
    import captify_ws.agents.session as session_module
    import captify_ws.rooms.presence as presence_module

    monkeypatch.setattr(presence_module, "OUTDATED_TIMEOUT_S", 1.0)
    monkeypatch.setattr(session_module, "RENEW_PRESENCE_S", 0.3)
    async with running_server(awareness_renewal_s=0.2):
        async with captify_ws.agent_session("idle-doc") as agent:
            room = agent.room
            # 2.5 timeouts of idleness: the agent's presence stays all along
            await stays(lambda: agent.client_id in room.presence.states,
                        "the idle agent's presence", seconds=2.5)
        assert agent.client_id not in room.presence.states


async def test_hooks_see_an_agents_changes_under_its_name() -> None:
    """on_change of the hook interface names the agent (origin label agent:<name>)."""
    from captify_ws.events import ChangeEvent

    seen: list[ChangeEvent] = []

    class Recorder:
        def on_change(self, event: ChangeEvent) -> None:
            seen.append(event)

    async with running_server(extra_hooks=(Recorder(),)):
        async with captify_ws.agent_session("hooked", name="Writer") as agent:
            await agent.insert_text(0, "by the agent")
        await eventually(lambda: any(origin.label == "agent:Writer" for event in seen
                                     for origin in event.origins
                                     if event.document_id == "hooked"),
                         "the agent's change in the hook's events")


async def test_hocuspocus_providers_see_the_agent_and_its_text() -> None:
    """A HocuspocusProvider (v4) sees the agent's awareness state (name, color, caret) and
    text while the session lasts, and the state gone after it."""
    from tests.helpers import hocuspocus_providers

    async with running_server() as srv, hocuspocus_providers() as repl:
        await repl.call("open", name="h", url=f"{srv.ws}/ws/hocuspocus", doc="hp-doc",
                        impl="v4", token="")
        await repl.call("waitSynced", name="h")
        async with captify_ws.agent_session("hp-doc", name="Helper",
                                            color="#16a34a") as agent:
            await agent.insert_text(0, "agent text")
            await repl.call("waitUntil", name="h", field="text", equals="agent text")
            async def agent_cursor() -> dict[str, Any] | None:
                states = (await repl.call("awareness", name="h"))["states"]
                found = states.get(str(agent.client_id))
                return found if found and found.get("cursor") else None

            state = await eventually(agent_cursor, "the agent's cursor at the provider",
                                     interval=0.05)
            assert state["user"] == {"name": "Helper", "color": "#16a34a"}
        async def agent_gone() -> bool:
            return str(agent.client_id) not in (await repl.call("awareness", name="h"))["states"]

        await eventually(agent_gone, "the agent's presence to go", interval=0.05)
