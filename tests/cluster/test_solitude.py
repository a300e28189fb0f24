"""An instance alone with a document publishes none of its updates and presence changes, and
whatever it skipped reaches another instance that comes (cluster/solitude.py, bridge.py): two
in-process instances on one MemoryHub, B's broker able to lose the hub like a Redis broker
loses Redis, driven through generated interleavings of edits, presence, joins, leaves and
outages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.broker.base import ReceiversCallback
from captify_ws.broker.memory import MemoryBroker, MemoryHub
from captify_ws.server import Server
from tests.helpers import test_settings as settings_for
from tests.inprocess import InProcessClient
from tests.polling import eventually

pytestmark = pytest.mark.unit


class FlakyBroker(MemoryBroker):
    """A memory broker that can lose the hub as a Redis broker loses Redis: while down its
    subscriptions are gone and what it publishes is dropped; back, it subscribes again and
    runs ``on_reconnect``."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.down = False

    def publish(self, channel: str, data: bytes,
                on_receivers: ReceiversCallback | None = None) -> None:
        if not self.down:
            super().publish(channel, data, on_receivers)

    async def subscribe(self, channel: str) -> None:
        if self.down:
            self._channels.add(channel)
        else:
            await super().subscribe(channel)

    def lose(self, publishing: bool = False) -> None:
        """Subscriptions gone; what is published is dropped unless ``publishing`` (a Redis
        broker whose Pub/Sub connection broke while its publishing one works)."""
        self.down = not publishing
        for channel in self._channels:
            subscribers = self.hub.subscribers.get(channel, set())
            subscribers.discard(self)
            if not subscribers:
                self.hub.subscribers.pop(channel, None)

    def regain(self) -> None:
        self.down = False
        for channel in self._channels:
            self.hub.subscribers.setdefault(channel, set()).add(self)
        self.on_reconnect()


@contextlib.asynccontextmanager
async def instances(flaky_a: FlakyBroker | None = None,
                    ) -> AsyncIterator[tuple[Server, Server, FlakyBroker]]:
    """A and B on one hub (B's broker flaky); anti-entropy every 0.2 s, rooms unload at once;
    presence is renewed every 20 s only (a renewal would repair missing presence: the tests
    wait :data:`PRESENCE_S` for it)."""
    hub = flaky_a.hub if flaky_a is not None else MemoryHub()
    flaky = FlakyBroker(hub)
    settings = {"anti_entropy_s": 0.2, "room_grace_s": 0.0, "awareness_flush_ms": 1,
                "awareness_renewal_s": 20}
    a = Server(settings_for(**settings), broker=flaky_a or MemoryBroker(hub))
    b = Server(settings_for(**settings), broker=flaky)
    await a.start()
    await b.start()
    try:
        yield a, b, flaky
    finally:
        await a.stop(timeout=2)
        await b.stop(timeout=2)


#: how long a test waits for presence to cross (well under the renewal period)
PRESENCE_S = 3.0


class Writer:
    """A JSON client of ``server`` that appends tokens to text ``t`` of its own Yjs document
    and sets its presence."""

    def __init__(self, server: Server, document_id: str, client_id: str) -> None:
        self.document_id = document_id
        self.client = InProcessClient(server, "/ws/fabric", {"documentId": document_id,
                                                             "clientID": client_id})
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("t", type=Text)

    def edit(self, token: str) -> None:
        updates: list[bytes] = []
        subscription = self.doc.observe(lambda event: updates.append(event.update))
        self.text += token
        self.doc.unobserve(subscription)
        self.client.send({"type": "update", "documentId": self.document_id,
                          "data": base64.b64encode(updates[0]).decode()})

    def presence(self, value: Any) -> None:
        self.client.send({"type": "awareness", "documentId": self.document_id, "data": value})

    def presence_of(self, client_id: str) -> Any:
        """The last presence this client was told of ``client_id`` (``None``: none or gone)."""
        seen = [m.get("data") for m in self.client.texts()
                if m["type"] == "awareness" and m.get("clientID") == client_id]
        return seen[-1] if seen else None


def _text(server: Server, document_id: str) -> str:
    room = server.rooms.get(document_id)
    return str(room.doc.get("t", type=Text)) if room is not None else ""


async def _turns(count: int) -> None:
    """Let the event loop run ``count`` iterations (deliveries take one)."""
    for _ in range(count):
        await asyncio.sleep(0)


def _alone(server: Server, document_id: str) -> bool:
    assert server.cluster is not None
    return document_id in server.cluster.solitude.alone


async def test_an_instance_alone_stops_publishing_and_resumes_when_another_loads() -> None:
    """A's edits and presence while nobody else has the document are counted as skipped and
    not published; when B loads it, B gets all of them, and B's edits reach A."""
    async with instances() as (a, b, _):
        assert a.cluster is not None
        ann = Writer(a, "lonely", "ann")
        ann.edit("first;")
        await eventually(lambda: _alone(a, "lonely"), "A to be alone with the document")
        for index in range(20):
            ann.edit(f"a{index};")
        ann.presence({"name": "Ann"})
        await eventually(lambda: _text(a, "lonely").count(";") == 21, "A's edits at A")
        assert a.cluster.solitude.skipped >= 20
        bob = Writer(b, "lonely", "bob")
        await eventually(lambda: _text(b, "lonely") == _text(a, "lonely"), "A's text at B")
        await eventually(lambda: bob.presence_of("ann") == {"name": "Ann"}, "Ann's presence",
                         timeout=PRESENCE_S)
        assert not _alone(a, "lonely")
        bob.edit("b;")
        ann.edit("after;")
        await eventually(lambda: _text(a, "lonely") == _text(b, "lonely")
                         and "b;" in _text(a, "lonely") and "after;" in _text(b, "lonely"),
                         "edits both ways")


async def test_a_digest_after_a_reconnect_ends_solitude_with_the_presence() -> None:
    """B loads the document while its broker is down (its announcement is lost) and A, alone,
    skips edits and presence; B's reconnect digest makes A publish both."""
    async with instances() as (a, b, flaky):
        ann = Writer(a, "outage", "ann")
        ann.edit("first;")
        await eventually(lambda: _alone(a, "outage"), "A to be alone with the document")
        flaky.lose()
        bob = Writer(b, "outage", "bob")
        await _skipped(a, lambda: ann.edit("while-b-was-down;"))
        await _skipped(a, lambda: ann.presence({"name": "Ann"}))
        assert "while-b-was-down;" not in _text(b, "outage")
        flaky.regain()
        await eventually(lambda: _text(b, "outage") == _text(a, "outage"), "A's text at B")
        await eventually(lambda: bob.presence_of("ann") == {"name": "Ann"}, "Ann's presence",
                         timeout=PRESENCE_S)


async def test_a_late_receiver_count_does_not_make_an_instance_alone() -> None:
    """A receiver count of one that arrives after another instance spoke about the document
    (the count was taken before it subscribed) leaves the instance publishing."""
    async with instances() as (a, _, _):
        assert a.cluster is not None
        Writer(a, "late", "ann").edit("x;")
        await eventually(lambda: _alone(a, "late"), "A alone")
        solitude = a.cluster.solitude
        solitude.contact("late")  # another instance: not alone, and the token moved on
        probe = solitude.probe("late")
        assert probe is not None
        solitude.contact("late")  # another instance spoke while the probe was in flight
        probe(1)
        assert not _alone(a, "late")
        fresh = solitude.probe("late")
        assert fresh is not None
        solitude.reset()  # a reconnect voids it
        fresh(1)
        assert not _alone(a, "late")


async def test_a_reconnect_ends_solitude_with_the_presence() -> None:
    """A's Pub/Sub connection breaks while it can still publish: B's subscription makes the
    receiver count one and A believes it is alone; A's reconnect publishes what it skipped."""
    flaky_a = FlakyBroker(MemoryHub())
    async with instances(flaky_a) as (a, b, _):
        ann, bob = Writer(a, "deaf", "ann"), Writer(b, "deaf", "bob")
        ann.edit("first;")
        await eventually(lambda: _text(b, "deaf") == "first;", "A's edit at B")
        flaky_a.lose(publishing=True)

        def edited_alone() -> bool:
            ann.edit("x;")
            return _alone(a, "deaf")
        await eventually(edited_alone, "A to count only B and believe it is alone")
        await _skipped(a, lambda: ann.edit("skipped;"))
        await _skipped(a, lambda: ann.presence({"name": "Ann"}))
        flaky_a.regain()
        await eventually(lambda: _text(b, "deaf") == _text(a, "deaf"), "A's text at B")
        await eventually(lambda: bob.presence_of("ann") == {"name": "Ann"}, "Ann's presence",
                         timeout=PRESENCE_S)


async def _skipped(server: Server, action: Any) -> None:
    """Do ``action`` and wait until ``server`` skipped a publication because of it."""
    assert server.cluster is not None
    solitude = server.cluster.solitude
    before = solitude.skipped
    action()
    await eventually(lambda: solitude.skipped > before, "a skipped publication")


OPERATIONS = ("edit_a", "edit_a", "edit_b", "presence_a", "join_b", "leave_b", "outage_b")


@pytest.mark.parametrize("seed", range(24))
async def test_generated_interleavings_converge(seed: int) -> None:
    """Random interleavings of A's edits and presence, B's edits, B's client joining and
    leaving and B's broker losing the hub: at the end both instances hold every edit and B's
    client sees Ann's last presence; A skipped publications while it was alone."""
    rng = random.Random(seed)
    document_id = f"mix-{seed}"
    async with instances() as (a, b, flaky):
        assert a.cluster is not None
        ann = Writer(a, document_id, "ann")
        tokens: list[str] = []
        ann.edit("a-first;")
        tokens.append("a-first;")
        await eventually(lambda: _alone(a, document_id), "A alone at the start")
        bob: Writer | None = None
        presence: Any = None
        for step in range(30):
            operation = rng.choice(OPERATIONS)
            if operation == "edit_a" or (operation == "edit_b" and bob is None):
                tokens.append(f"a{step};")
                ann.edit(tokens[-1])
            elif operation == "edit_b" and bob is not None:
                tokens.append(f"b{step};")
                bob.edit(tokens[-1])
            elif operation == "presence_a":
                presence = {"step": step}
                ann.presence(presence)
            elif operation == "join_b" and bob is None:
                bob = Writer(b, document_id, "bob")
            elif operation == "leave_b" and bob is not None:
                bob.client.leave()
                bob = None
            elif operation == "outage_b" and not flaky.down:
                flaky.lose()  # A hears nobody: once it publishes again it is alone

                def edited_alone(step: int = step) -> bool:
                    if _alone(a, document_id):
                        return True
                    tokens.append(f"a{step}-outage{len(tokens)};")
                    ann.edit(tokens[-1])
                    return False
                await eventually(edited_alone, "A alone during B's outage")
            elif operation == "outage_b":
                flaky.regain()
            await _turns(rng.randint(0, 4))
        if flaky.down:
            flaky.regain()
        watcher = bob if bob is not None else Writer(b, document_id, "bob")
        expected = sorted(tokens)

        def converged() -> bool:
            texts = {_text(a, document_id), _text(b, document_id)}
            return len(texts) == 1 and sorted(t + ";" for t in texts.pop().split(";")[:-1]) \
                == expected

        await eventually(converged, "every edit on both instances", timeout=5)
        await eventually(lambda: watcher.presence_of("ann") == presence,
                         f"Ann's last presence {presence} at B's client", timeout=PRESENCE_S)
        assert a.cluster.solitude.skipped > 0
