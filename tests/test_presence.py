"""Presence belongs to the connection that controls it (issue 12.3), a returning user shows at
once (12.4), and presence is bounded per connection (13.7): real y-websocket providers, JSON
clients and raw y-websocket attackers, on both transports and across two instances on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from captify_ws.protocol import ywebsocket
from captify_ws.protocol.ywebsocket import AwarenessEntry
from captify_ws.rooms.presence import awareness_id_for
from tests.helpers import (
    JsonClient,
    ProviderRepl,
    RunningServer,
    json_client,
    providers,
    running_server,
)
from tests.polling import eventually
from tests.services import REDIS_URL, require_redis

SECRET = "presence-test-secret-0123456789abcdef"


class RawYws:
    """A raw y-websocket client: sends the awareness entries it is told to, and keeps the
    newest entry it received for every client id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: dict[int, AwarenessEntry] = {}
        self.frames: list[bytes] = []
        self.close_code: int | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                self.frames.append(message)
                event = ywebsocket.decode_message(message)
                if isinstance(event, ywebsocket.AwarenessUpdate):
                    for entry in event.entries:
                        self.seen[entry.client_id] = entry
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def send(self, *entries: tuple[int, int, Any]) -> None:
        await self.ws.send(ywebsocket.encode_awareness(
            AwarenessEntry(cid, clock, json.dumps(state)) for cid, clock, state in entries))

    async def clock_of(self, client_id: int) -> int:
        await eventually(self._has(client_id), f"the attacker sees {client_id}")
        return self.seen[client_id].clock

    def _has(self, client_id: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return client_id in self.seen
        return check

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def raw_yws(base: str, document_id: str, query: str = "") -> AsyncIterator[RawYws]:
    ws = await connect(f"{base}/ws/fabric/{document_id}{query}", max_queue=None,
                       max_size=None)
    client = RawYws(ws)
    try:
        yield client
    finally:
        await client.close()


async def states(repl: ProviderRepl, name: str) -> dict[str, Any]:
    return (await repl.call("awareness", name=name))["states"]  # type: ignore[no-any-return]


async def open_providers(repl: ProviderRepl, url: str, doc: str, names: list[str],
                         **extra: Any) -> dict[str, int]:
    ids = {}
    for name in names:
        ids[name] = (await repl.call("open", name=name, url=url, doc=doc, **extra))["clientID"]
    await asyncio.gather(*(repl.call("waitSynced", name=name) for name in names))
    return ids


def shows(repl: ProviderRepl, name: str, client_id: int,
          state: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await states(repl, name)).get(str(client_id)) == state
    return check


async def metric(srv: RunningServer, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{srv.http}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


FORGED = {"user": {"name": "forged"}}
VICTIM = {"user": {"name": "victim"}}


async def test_the_issues_forged_entry_is_ignored(transport: str) -> None:
    """Issue 12.3's input: a raw client sends the victim's id with its clock + 1 and
    {"user":{"name":"forged"}}: no provider shows it, the victim keeps its own state, a forged
    removal removes nothing, and the metric counts both."""
    async with running_server(transport) as srv, providers() as repl:
        ids = await open_providers(repl, f"{srv.ws}/ws/fabric", "forge", ["victim", "viewer"])
        victim = ids["victim"]
        await repl.call("setAwareness", name="victim", state=VICTIM)
        async with raw_yws(srv.ws, "forge") as attacker:
            clock = await attacker.clock_of(victim)
            await attacker.send((victim, clock + 1, FORGED))
            await attacker.send((victim, clock + 2, None))
            await attacker.send((99, 1, {"user": {"name": "attacker"}}))  # arrives after them
            await eventually(shows(repl, "viewer", 99, {"user": {"name": "attacker"}}),
                        "the attacker's own state")
            assert (await states(repl, "viewer"))[str(victim)] == VICTIM
            assert (await states(repl, "victim"))[str(victim)] == VICTIM  # its local state
            assert attacker.seen[victim].state == json.dumps(VICTIM, separators=(",", ":")) \
                or json.loads(attacker.seen[victim].state) == VICTIM
            joiner = await open_providers(repl, f"{srv.ws}/ws/fabric", "forge", ["joiner"])
            assert joiner
            await eventually(shows(repl, "joiner", victim, VICTIM), "the joiner sees the victim")
            assert await metric(srv, 'captify_presence_ignored_total{reason="foreign"}') == 2


async def test_json_client_cannot_take_a_providers_id(transport: str) -> None:
    """A JSON client whose clientID is a live provider's id cannot set or withdraw that
    provider's presence: it is told so, and nobody sees a change."""
    async with running_server(transport) as srv, providers() as repl:
        ids = await open_providers(repl, f"{srv.ws}/ws/fabric", "json-forge",
                                   ["victim", "viewer"])
        await repl.call("setAwareness", name="victim", state=VICTIM)
        await eventually(shows(repl, "viewer", ids["victim"], VICTIM), "the victim's state")
        async with json_client(srv, "json-forge", str(ids["victim"])) as forger:
            await forger.send({"type": "awareness", "documentId": "json-forge", "data": FORGED})
            error = await forger.expect("error")
            assert error["data"] == {"code": "presence_not_owned"}
            await forger.send({"type": "awareness", "documentId": "json-forge", "data": None})
            assert (await forger.expect("error"))["data"] == {"code": "presence_not_owned"}
        async with json_client(srv, "json-forge", "sentinel") as sentinel:
            await sentinel.send({"type": "awareness", "documentId": "json-forge",
                                 "data": {"s": 1}})
            await eventually(shows(repl, "viewer", awareness_id_for("sentinel"), {"s": 1}),
                        "the sentinel")
            assert (await states(repl, "viewer"))[str(ids["victim"])] == VICTIM
            assert (await states(repl, "victim"))[str(ids["victim"])] == VICTIM


def _token(subject: str, access: str) -> str:
    return jwt.encode({"sub": subject, "exp": int(time.time()) + 600,
                       "docs": {"gen-*": access}}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("seed", [1, 2])
async def test_generated_forgeries_change_nothing(transport: str, seed: int) -> None:
    """Random forge attempts (other live clients' ids, sets and removals, clocks below, at and
    far above theirs) from raw writers, raw read-only members and JSON clients named after a
    victim: every viewer and every victim keeps the true states."""
    rng = random.Random(seed)
    doc = f"gen-{seed}"
    async with running_server(transport, auth="jwt", jwt_secret=SECRET,
                              authorizer="jwt-claims") as srv, providers() as repl:
        writer, reader = _token("w", "write"), _token("r", "read")
        url = f"{srv.ws}/ws/fabric"
        ids = await open_providers(repl, url, doc, ["v1", "v2", "viewer"],
                                   params={"token": writer})
        truth: dict[int, Any] = {}
        for name in ("v1", "v2"):
            state = {"user": {"name": name}, "n": rng.randrange(1000)}
            await repl.call("setAwareness", name=name, state=state)
            truth[ids[name]] = state
        async with connect(srv.fabric(doc, "json-victim") + f"&token={writer}") as ws:
            json_victim = JsonClient(ws, doc)
            await json_victim.expect("connected")
            await json_victim.send({"type": "awareness", "documentId": doc,
                                    "data": {"user": {"name": "json"}}})
            truth[awareness_id_for("json-victim")] = {"user": {"name": "json"}}
            for cid, state in truth.items():
                await eventually(shows(repl, "viewer", cid, state), f"{cid}'s state")
            async with raw_yws(srv.ws, doc, f"?token={writer}") as w, \
                    raw_yws(srv.ws, doc, f"?token={reader}") as r:
                attackers = [(w, 7001), (r, 7002)]
                for raw, _ in attackers:
                    for cid in truth:
                        await raw.clock_of(cid)
                for _ in range(40):
                    raw, _ = rng.choice(attackers)
                    cid = rng.choice(list(truth))
                    clock = raw.seen[cid].clock + rng.choice([-1, 0, 1, 2, 1000])
                    state = None if rng.random() < 0.3 else {"user": {"name": "forged"},
                                                             "k": rng.randrange(99)}
                    await raw.send((cid, max(clock, 0), state))
                for cid in rng.sample(list(truth), 2):
                    async with connect(srv.fabric(doc, str(cid) if cid < 1 << 32
                                                  else "json-victim")
                                       + f"&token={writer}") as jws:
                        forger = JsonClient(jws, doc)
                        await forger.expect("connected")
                        await forger.send({"type": "awareness", "documentId": doc,
                                           "data": FORGED if rng.random() < 0.7 else None})
                        assert (await forger.expect("error"))["data"]["code"] == \
                            "presence_not_owned"
                for raw, own in attackers:
                    await raw.send((own, 1, {"sentinel": own}))
                for _, own in attackers:
                    await eventually(shows(repl, "viewer", own, {"sentinel": own}), "sentinels")
                seen = await states(repl, "viewer")
                assert {cid: seen.get(str(cid)) for cid in truth} == truth
                for name in ("v1", "v2"):
                    assert (await states(repl, name))[str(ids[name])] == truth[ids[name]]
                got = json_victim.inbox + await json_victim.quiet(0.2)
                assert not [m for m in got if m.get("type") == "awareness"
                            and m["data"] is not None and "forged" in json.dumps(m["data"])]


# -- 12.4: a returning user shows at once ----------------------------------------------------

RETURN_WITHIN_S = 3.0  # the fault: ~20 s (the provider's next renewal)


async def _gone_then_back(repl: ProviderRepl, viewer: str, client_id: int, state: Any,
                          leave: Callable[[], Awaitable[None]],
                          back: Callable[[], Awaitable[None]]) -> float:
    await eventually(shows(repl, viewer, client_id, state), "present before leaving")
    await leave()
    await eventually(shows(repl, viewer, client_id, None), "removed after leaving")
    started = time.monotonic()
    await back()
    await eventually(shows(repl, viewer, client_id, state), "back at once", RETURN_WITHIN_S)
    return time.monotonic() - started


async def test_reconnecting_provider_reappears_at_once(transport: str) -> None:
    """disconnect()/connect(), and a socket the server drops: every other client (provider
    and JSON) sees the returning presence at once, not after the next renewal."""
    async with running_server(transport) as srv, providers() as repl, \
            json_client(srv, "back", "json-viewer") as viewer_json:
        url = f"{srv.ws}/ws/fabric"
        ids = await open_providers(repl, url, "back", ["u", "viewer"])
        user = ids["u"]
        await repl.call("setAwareness", name="u", state={"user": "u"})

        async def leave() -> None:
            await repl.call("disconnect", name="u")

        async def back() -> None:
            await repl.call("connect", name="u")

        for _ in range(2):
            await _gone_then_back(repl, "viewer", user, {"user": "u"}, leave, back)
            await viewer_json.expect("awareness", where=lambda m: m["clientID"] == str(user)
                                     and m["data"] == {"user": "u"})

        # The server drops the socket; the provider reconnects by itself after its backoff
        # (a removal announced meanwhile may be overtaken by the return: both are right).
        room = srv.server.rooms.get("back")
        assert room is not None
        closes = len((await repl.call("status", name="u"))["closes"])
        for member in room.all_members():
            if member.wire == "yws" and room.presence.owned_by(member) == {user}:
                member.connection.close(1012, "restart")

        async def reconnected() -> bool:
            status = await repl.call("status", name="u")
            return len(status["closes"]) > closes and status["connected"]

        await eventually(reconnected, "the provider reconnects by itself")
        await eventually(shows(repl, "viewer", user, {"user": "u"}), "back at once after a drop",
                    RETURN_WITHIN_S)
        assert (await states(repl, "u"))[str(user)] == {"user": "u"}


async def test_reconnecting_json_client_reappears_at_once(transport: str) -> None:
    """A JSON client that leaves and comes back with its presence shows at once for
    providers (the server keeps its clock above the removal it announced)."""
    async with running_server(transport) as srv, providers() as repl:
        await open_providers(repl, f"{srv.ws}/ws/fabric", "json-back", ["viewer"])
        json_id = awareness_id_for("walker")
        for _ in range(3):
            async with json_client(srv, "json-back", "walker") as walker:
                await walker.send({"type": "awareness", "documentId": "json-back",
                                   "data": {"user": "walker"}})
                await eventually(shows(repl, "viewer", json_id, {"user": "walker"}),
                            "the JSON client's presence", RETURN_WITHIN_S)
            await eventually(shows(repl, "viewer", json_id, None), "removed when it left")


async def test_presence_across_two_instances_on_redis() -> None:
    """Two instances on Redis: a provider that reconnects shows at once on the other
    instance, and a forged entry for a client of the other instance is ignored there too."""
    require_redis()
    prefix = f"test-{secrets.token_hex(4)}"
    common: dict[str, Any] = {"broker": REDIS_URL, "broker_prefix": prefix,
                              "cluster_heartbeat_s": 0.5, "anti_entropy_s": 1}
    async with running_server(**common) as one, running_server(**common) as two, \
            providers() as repl:
        ids = await open_providers(repl, f"{one.ws}/ws/fabric", "duo", ["u"])
        await open_providers(repl, f"{two.ws}/ws/fabric", "duo", ["viewer"])
        user = ids["u"]
        await repl.call("setAwareness", name="u", state={"user": "u"})

        async def leave() -> None:
            await repl.call("disconnect", name="u")

        async def back() -> None:
            await repl.call("connect", name="u")

        await _gone_then_back(repl, "viewer", user, {"user": "u"}, leave, back)
        async with raw_yws(two.ws, "duo") as attacker:
            clock = await attacker.clock_of(user)
            await attacker.send((user, clock + 1, FORGED))
            await attacker.send((user, clock + 2, None))
            await attacker.send((99, 1, {"sentinel": 1}))
            await eventually(shows(repl, "u", 99, {"sentinel": 1}), "the sentinel on instance one")
            await eventually(shows(repl, "viewer", 99, {"sentinel": 1}), "the sentinel on two")
            assert (await states(repl, "viewer"))[str(user)] == {"user": "u"}
            assert (await states(repl, "u"))[str(user)] == {"user": "u"}
        assert await metric(two, 'captify_presence_ignored_total{reason="foreign"}') == 2


# -- 13.7: presence is bounded per connection ------------------------------------------------

async def test_the_issues_presence_flood_is_bounded(transport: str) -> None:
    """Issue 13.7's input (one connection setting 4,096 ids × 16 KB): the connection is closed
    with 1009 at its fifth id, the document holds at most its four, and a joiner gets small
    frames."""
    async with running_server(transport) as srv:
        state = {"pad": "x" * (16 * 1000)}
        async with raw_yws(srv.ws, "flood") as attacker:
            with contextlib.suppress(ConnectionClosed):
                for client_id in range(1, 4097):
                    await attacker.send((client_id, 1, state))
            await eventually(_closed(attacker), "the flooder is closed")
            assert attacker.close_code == 1009
        room = srv.server.rooms.get("flood")
        assert room is None or len(room.presence) <= srv.server.settings.max_presence_states
        async with raw_yws(srv.ws, "flood") as joiner:
            await joiner.ws.send(ywebsocket.encode_query_awareness())
            await asyncio.sleep(0)  # the joiner reads in the background
        assert sum(len(f) for f in joiner.frames) < 100_000


def _closed(client: RawYws) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return client.close_code is not None
    return check


async def test_bytes_per_connection_bounded(transport: str) -> None:
    """A connection that holds more bytes of presence than max_presence_bytes is closed
    with 1009, and nothing of that message is applied."""
    async with running_server(transport, max_presence_states=8,
                              max_presence_bytes=40 << 10) as srv:
        state = {"pad": "y" * 15_000}
        async with raw_yws(srv.ws, "bytes") as client:
            await client.send((1, 1, state), (2, 1, state))
            await eventually(lambda: _has_states(srv, "bytes", 2), "two states held")
            with contextlib.suppress(ConnectionClosed):
                await client.send((3, 1, state))
            await eventually(_closed(client), "closed past the byte bound")
            assert client.close_code == 1009


async def _has_states(srv: RunningServer, document_id: str, count: int) -> bool:
    room = srv.server.rooms.get(document_id)
    return room is not None and len(room.presence) == count


async def test_no_presence_frame_exceeds_the_message_limit(transport: str) -> None:
    """Many members with large states: a joiner's snapshot and the broadcasts come in frames
    under max_message_size, and together carry every state."""
    limit = 64 << 10
    async with running_server(transport, max_message_size=limit) as srv:
        members = []
        async with contextlib.AsyncExitStack() as stack:
            for n in range(12):
                member = await stack.enter_async_context(raw_yws(srv.ws, "big"))
                await member.send((1000 + n, 1, {"pad": chr(65 + n) * 15_000}))
                members.append(member)
            await eventually(lambda: _has_states(srv, "big", 12), "twelve states")
            joiner = await stack.enter_async_context(raw_yws(srv.ws, "big"))
            await eventually(lambda: _seen_all(joiner, 12), "the joiner has every state")
            for client in [joiner, *members]:
                assert max(len(frame) for frame in client.frames) <= limit
            assert len([f for f in joiner.frames if f[0] == 1]) >= 3


async def _seen_all(client: RawYws, count: int) -> bool:
    return len(client.seen) >= count


async def test_hocuspocus_member_cannot_forge_presence(transport: str) -> None:
    """The same rule on /ws/hocuspocus: a member that sends an entry (and a removal) for a
    y-websocket provider's id with a newer clock changes nothing for anyone."""
    from captify_ws.protocol import hocuspocus as hp
    from tests.test_hocuspocus_hostile import next_frame, token_frame

    async with running_server(transport) as srv, providers() as repl:
        ids = await open_providers(repl, f"{srv.ws}/ws/fabric", "hp-forge", ["victim", "viewer"])
        victim = ids["victim"]
        await repl.call("setAwareness", name="victim", state=VICTIM)
        await eventually(shows(repl, "viewer", victim, VICTIM), "the victim's state")
        room = srv.server.rooms.get("hp-forge")
        assert room is not None
        clock = room.presence.slots[victim].announced
        async with connect(f"{srv.ws}/ws/hocuspocus") as ws:
            await ws.send(token_frame("hp-forge", ""))
            await next_frame(ws, "hp-forge", (2,))  # authenticated
            encoder = hp.FrameEncoder("hp-forge")
            await ws.send(encoder.awareness([AwarenessEntry(victim, clock + 1,
                                                            json.dumps(FORGED))]))
            await ws.send(encoder.awareness([AwarenessEntry(victim, clock + 2, "null")]))
            await ws.send(encoder.awareness([AwarenessEntry(99, 1, '{"sentinel":1}')]))
            await eventually(shows(repl, "viewer", 99, {"sentinel": 1}), "the sentinel")
            assert (await states(repl, "viewer"))[str(victim)] == VICTIM
            assert (await states(repl, "victim"))[str(victim)] == VICTIM
        assert await metric(srv, 'captify_presence_ignored_total{reason="foreign"}') == 2
