"""Hooks: the life of documents and connections, as the events a hook receives."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws import (
    ChangeEvent,
    ChangeOrigin,
    ConfigError,
    Hooks,
    Principal,
    Server,
    Settings,
    StatelessEvent,
)
from captify_ws.hooks import MAX_QUEUED, HookRunner, load_hook
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Origin
from tests.helpers import hocuspocus_providers, json_client, running_server
from tests.outside import lifecycle_hooks
from tests.outside.lifecycle_hooks import Recorder
from tests.polling import eventually, stays

HOCUSPOCUS_HOOKS = "tests.outside.hocuspocus_hooks"


def _edits(count: int, name: str) -> list[bytes]:
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    for index in range(count):
        text.insert(len(text), f"{name}{index};")
    return out


def _text(updates: list[bytes], key: str = "t") -> str:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get(key, type=Text))


class Changes(Hooks):
    def __init__(self) -> None:
        self.changes: list[ChangeEvent] = []

    async def on_change(self, event: ChangeEvent) -> None:
        self.changes.append(event)


def _room(runner: HookRunner, document_id: str = "d") -> DocumentRoom:
    room = DocumentRoom(document_id, awareness_flush_s=0.05, awareness_renewal_s=10)
    runner.room_loaded(room)
    return room


@pytest.mark.unit
async def test_changes_are_debounced_into_one_update_with_their_origins() -> None:
    """Edits made close together reach on_change once: one update holding all of them and
    each distinct origin once, in order of appearance."""
    hook = Changes()
    runner = HookRunner([hook], change_debounce_s=0.05, change_max_wait_s=5)
    runner.start()
    room = _room(runner)
    ours, theirs = _edits(5, "a"), _edits(5, "b")
    for mine, other in zip(ours, theirs, strict=True):
        room.apply_update(mine, Origin("server", label="api:alice"))
        room.apply_update(other, Origin("broker", instance="i-2"))
        await asyncio.sleep(0)  # one loop turn each: the room integrates them in batches
    await eventually(lambda: hook.changes, "the change event")
    await stays(lambda: len(hook.changes) == 1, "a single change event", seconds=0.15)
    event = hook.changes[0]
    assert event.count == 10
    assert event.origins == (ChangeOrigin("server", label="api:alice"),
                             ChangeOrigin("broker", instance="i-2"))
    assert event.local
    assert _text([event.update]) == _text(ours + theirs)
    await runner.stop()


@pytest.mark.unit
async def test_continuous_editing_still_reports_within_the_max_wait() -> None:
    """Edits that never pause are reported every max wait, not held back for ever."""
    hook = Changes()
    runner = HookRunner([hook], change_debounce_s=0.2, change_max_wait_s=0.3)
    runner.start()
    room = _room(runner)
    edits = _edits(40, "a")
    for update in edits:  # one edit every 25 ms: shorter than the debounce, for 1 s
        room.apply_update(update, Origin("server"))
        await asyncio.sleep(0.025)
    await eventually(lambda: sum(e.count for e in hook.changes) == 40, "every edit reported")
    assert len(hook.changes) >= 2, "continuous edits were held back until they paused"
    assert _text([e.update for e in hook.changes]) == _text(edits)
    await runner.stop()


@st.composite
def _schedules(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """(author, edits, pause in ms) steps of two or three authors."""
    return draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4), st.integers(0, 30)),
                         min_size=1, max_size=12))


@pytest.mark.unit
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=_schedules())
def test_any_edit_schedule_is_reported_whole(schedule: list[tuple[int, int, int]]) -> None:
    """Whatever the timing, the change events' updates rebuild the document, count every
    update once and name exactly the origins that edited (unload delivers what is pending)."""

    async def run() -> None:
        hook = Changes()
        runner = HookRunner([hook], change_debounce_s=0.01, change_max_wait_s=0.04)
        runner.start()
        room = _room(runner)
        streams = {author: iter(_edits(60, f"u{author}-")) for author in range(3)}
        applied: list[bytes] = []
        for author, count, pause in schedule:
            for _ in range(count):
                update = next(streams[author])
                room.apply_update(update, Origin("server", label=f"u{author}"))
                applied.append(update)
            await asyncio.sleep(pause / 1000)
        runner.room_unloaded(room)
        await runner.stop()
        assert sum(e.count for e in hook.changes) == len(applied)
        assert _text([e.update for e in hook.changes]) == _text(applied)
        labels = {origin.label for e in hook.changes for origin in e.origins}
        assert labels == {f"u{author}" for author, _, _ in schedule}

    asyncio.run(run())


@pytest.mark.unit
async def test_a_failing_hook_is_logged_with_an_error_id_and_the_next_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises is logged under an error id; the hooks after it still run."""
    hook = Changes()
    runner = HookRunner([lifecycle_hooks.Broken(), hook], change_debounce_s=0.01)
    runner.start()
    room = _room(runner)
    with caplog.at_level(logging.ERROR, logger="captify_ws.hooks"):
        room.apply_update(_edits(1, "a")[0], Origin("server"))
        await eventually(lambda: hook.changes, "the second hook's change event")
    failed = [r for r in caplog.records if "hook on_change failed" in r.getMessage()]
    assert len(failed) == 1 and getattr(failed[0], "error_id", None)
    await runner.stop()


@pytest.mark.unit
async def test_events_past_the_bound_are_dropped_not_queued(
        caplog: pytest.LogCaptureFixture) -> None:
    """A hook that never returns holds at most MAX_QUEUED events; the rest are dropped and
    logged."""
    release = asyncio.Event()

    class Stuck(Hooks):
        async def on_store(self, event: Any) -> None:
            await release.wait()

    runner = HookRunner([Stuck()])
    runner.start()
    with caplog.at_level(logging.ERROR, logger="captify_ws.hooks"):
        for index in range(MAX_QUEUED + 50):
            runner.stored(f"d{index}", 1, 10)
    await asyncio.sleep(0)
    assert 49 <= runner.dropped <= 50
    assert any("events dropped" in r.getMessage() for r in caplog.records)
    release.set()
    await runner.stop()


@pytest.mark.unit
def test_hook_specs_are_checked() -> None:
    """A class named by module:attribute is instantiated; a misspelt hook method, an object
    with none, or a missing attribute is a ConfigError naming it."""
    assert isinstance(load_hook("tests.outside.lifecycle_hooks:Recorder"), Recorder)

    class Typo:
        async def on_chnage(self, event: Any) -> None: ...

    with pytest.raises(ConfigError, match="on_chnage"):
        HookRunner([Typo()])
    with pytest.raises(ConfigError, match="none of"):
        load_hook("tests.outside.lifecycle_hooks:RECORDERS")
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        load_hook("tests.outside.lifecycle_hooks:Nope")


@pytest.mark.unit
def test_store_and_broker_by_import_path() -> None:
    """--store and --broker take module:attribute: a factory is called with the settings; an
    object that is not a store is a ConfigError naming what it lacks."""
    settings = Settings(store="tests.outside.lifecycle_hooks:store", port=0)
    server = Server(settings)
    assert server.store.made_from is settings  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="has no open"):
        Server(Settings(store="tests.outside.lifecycle_hooks:RECORDERS", port=0))
    with pytest.raises(ConfigError, match="Recorder must take the settings"):
        Server(Settings(store="memory", broker="tests.outside.lifecycle_hooks:Recorder",
                        port=0))


async def test_the_life_of_a_document_and_its_connections(transport: str) -> None:
    """Two JSON clients edit one document: the hook named by settings sees it load (new),
    both connect, the changes with each connection as origin, the store commit, the
    disconnects with their close codes, and the unload, in that order."""
    async with running_server(transport, hooks=("tests.outside.lifecycle_hooks:Recorder",),
                              hook_change_debounce_ms=50) as srv:
        hook = lifecycle_hooks.RECORDERS[-1]
        async with json_client(srv, "life", "a") as a, json_client(srv, "life", "b") as b:
            await a.edit("hello ")
            b.apply(await b.expect("update"))
            await b.edit("world")
            await a.expect("update")
            conn_ids = {e.connection_id for e in hook.events if type(e).__name__ ==
                        "ConnectEvent"}
            await eventually(lambda: "ChangeEvent" in hook.kinds("life"), "the change event")
        await eventually(lambda: "UnloadEvent" in hook.kinds("life"), "the unload")
    kinds = hook.kinds("life")
    assert kinds[0] == "LoadEvent" and hook.events_of("LoadEvent")[0].new
    assert kinds[-1] == "UnloadEvent"
    assert {"ChangeEvent", "StoreEvent"} <= set(kinds[1:-1])
    changes = hook.events_of("ChangeEvent")
    origins = {o.connection_id for e in changes for o in e.origins}
    assert origins == conn_ids and len(conn_ids) == 2
    assert all(o.kind == "connection" for e in changes for o in e.origins)
    assert _text([e.update for e in changes], "text") == "hello world"
    assert sum(e.updates for e in hook.events_of("StoreEvent")) >= 2
    closed = hook.events_of("DisconnectEvent")
    assert {e.connection_id for e in closed} == conn_ids
    assert {e.close_code for e in closed} <= {1000, 1005}
    assert all(e.handler == "fabric" for e in closed)


async def test_a_broken_hook_never_breaks_the_room() -> None:
    """A hook that fails on every change: edits still reach the other client and the store."""
    async with running_server(hooks=("tests.outside.lifecycle_hooks:Broken",),
                              hook_change_debounce_ms=1) as srv:
        async with json_client(srv, "sturdy", "a") as a, json_client(srv, "sturdy", "b") as b:
            for word in ("one ", "two ", "three"):
                await a.edit(word)
                b.apply(await b.expect("update"))
                await asyncio.sleep(0.01)  # separate change windows: the hook fails each time
        assert str(b.text) == "one two three"
        stored = await srv.server.get_document("sturdy")
        assert stored is not None and _text([stored], "text") == "one two three"


async def test_on_authenticate_refuses_or_replaces_the_principal() -> None:
    """on_authenticate raising Reject refuses the connection with its code; returning a
    Principal replaces the authenticator's (its claims reach the authorizer and handlers)."""
    recorder = Recorder()
    async with running_server(auth="tests.outside.auth_hooks:authenticate_user",
                              extra_hooks=(recorder,)) as srv:
        with pytest.raises(ConnectionClosed) as refused:
            async with connect(f"{srv.fabric('guarded')}&user=mallory") as ws:
                await ws.recv()
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4403
        async with connect(f"{srv.fabric('guarded')}&user=alice") as ws:
            await ws.recv()
            conns = srv.server.connections["fabric"]
            await eventually(lambda: any(isinstance(c.principal, Principal) and
                                         c.principal.claims.get("team") == "blue"
                                         for c in conns), "alice's replaced principal")
        auth = recorder.events_of("AuthenticateEvent")
        assert [e.principal.user_id for e in auth] == ["mallory", "alice"]
        # refused before the handler: no connect event for mallory
        assert [e.user_id for e in recorder.events_of("ConnectEvent")] == ["alice"]


class HocuspocusHooks(Recorder):
    """Answers stateless "ping" with the user the document authenticated as."""

    async def on_stateless(self, event: StatelessEvent) -> None:
        self.events.append(event)
        if event.payload == "ping":
            event.reply(f"pong:{event.user_id}")


async def test_hocuspocus_documents_authenticate_and_talk_through_hooks() -> None:
    """Each Hocuspocus document token goes through on_authenticate with its document id (a
    Reject there is the provider's PermissionDenied), and stateless messages reach on_stateless
    of the same hook object, which answers."""
    hook = HocuspocusHooks()
    async with running_server(auth=f"{HOCUSPOCUS_HOOKS}:authenticate",
                              extra_hooks=(hook,)) as srv, hocuspocus_providers() as repl:
        url = f"{srv.ws}/ws/hocuspocus"
        await repl.call("open", name="alice", url=url, doc="hk", impl="v4", token="alice")
        await repl.call("open", name="mallory", url=url, doc="hk", impl="v3", token="mallory")
        await repl.call("waitSynced", name="alice")
        denied = await repl.call("waitState", name="mallory", field="failures", length=1)
        assert denied["failures"] == ["not you"] and not denied["authenticated"]
        await repl.call("sendStateless", name="alice", payload="ping")
        state = await repl.call("waitState", name="alice", field="stateless", length=1)
        assert state["stateless"] == ["pong:alice"]
    auth = hook.events_of("AuthenticateEvent")
    assert sorted((e.principal.user_id, e.document_id) for e in auth) == [
        ("alice", "hk"), ("mallory", "hk")]
    assert [(e.document_id, e.payload) for e in hook.events_of("StatelessEvent")] == [
        ("hk", "ping")]
