"""Two instances in one process, bridged by one MemoryHub: what a client of one does reaches
the clients of the other (cluster/bridge.py), with the real handlers and no socket."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.broker.memory import MemoryBroker
from captify_ws.protocol import cluster as wire
from captify_ws.protocol import ywebsocket
from captify_ws.server import Server
from tests.inprocess import InProcessClient, two_instances
from tests.polling import eventually

pytestmark = pytest.mark.unit


def _edit(text: str, doc: Doc[Any] | None = None) -> bytes:
    doc = doc if doc is not None else Doc()
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    shared = doc.get("t", type=Text)
    shared += text
    doc.unobserve(subscription)
    return updates[0]


def _text(server: Server, document_id: str) -> str:
    room = server.rooms.get(document_id)
    return str(room.doc.get("t", type=Text)) if room is not None else ""


async def _joined(client: InProcessClient) -> None:
    await eventually(lambda: client.frames, "the server's first message to the client")


async def test_an_update_on_one_instance_reaches_a_client_of_the_other() -> None:
    """A y-websocket client's update on A is relayed, byte for byte, to a y-websocket client
    of B, and stored once (by A, which accepted it), not again by B."""
    async with two_instances() as (a, b, _):
        reader = InProcessClient(b, "/ws/fabric/doc-1")
        writer = InProcessClient(a, "/ws/fabric/doc-1")
        await _joined(reader)
        await _joined(writer)
        update = _edit("hello from A")
        writer.send(ywebsocket.encode_sync_update(update))
        expected = ywebsocket.encode_sync_update(update)
        await eventually(lambda: expected in reader.binaries(), "the update at B's client")
        assert _text(b, "doc-1") == "hello from A"
        await a.writer.flush()
        await b.writer.flush()
        stored_a, stored_b = await a.store.load("doc-1"), await b.store.load("doc-1")
        assert stored_a is not None and stored_a.updates
        assert stored_b is None or not stored_b.updates


async def test_json_and_yjs_clients_of_two_instances_converge() -> None:
    """A JSON client of A and a y-websocket client of B edit the same document; both
    instances end with both edits."""
    async with two_instances() as (a, b, _):
        json_client = InProcessClient(a, "/ws/fabric", {"documentId": "doc-2",
                                                        "clientID": "ann"})
        yjs_client = InProcessClient(b, "/ws/fabric/doc-2")
        await _joined(json_client)
        await _joined(yjs_client)
        json_client.send({"type": "update", "documentId": "doc-2",
                          "data": base64.b64encode(_edit("ann;")).decode()})
        yjs_client.send(ywebsocket.encode_sync_update(_edit("bob;")))

        def both_have_both() -> bool:
            return all(sorted(_text(s, "doc-2").split(";")) == ["", "ann", "bob"]
                       for s in (a, b))

        await eventually(both_have_both, "both edits on both instances")
        updates = [m for m in json_client.texts() if m["type"] == "update"]
        assert updates, json_client.texts()


async def test_presence_crosses_and_leaves_with_its_client() -> None:
    """A JSON client's presence on A is announced to a JSON client of B with its clientID;
    when it leaves, B's client is told it is gone."""
    async with two_instances(awareness_flush_ms=10) as (a, b, _):
        watcher = InProcessClient(b, "/ws/fabric", {"documentId": "doc-3", "clientID": "bob"})
        ann = InProcessClient(a, "/ws/fabric", {"documentId": "doc-3", "clientID": "ann"})
        await _joined(watcher)
        await _joined(ann)
        ann.send({"type": "awareness", "documentId": "doc-3", "data": {"name": "Ann"}})

        def seen(data: Any) -> bool:
            return any(m["type"] == "awareness" and m.get("clientID") == "ann"
                       and m.get("data") == data for m in watcher.texts())

        await eventually(lambda: seen({"name": "Ann"}), "Ann's presence at B")
        ann.leave()
        await eventually(lambda: seen(None), "Ann's removal at B")


async def test_an_instance_that_loads_later_gets_what_the_other_has() -> None:
    """B loads a document A already edited (their stores are apart): the state-vector
    exchange on load brings A's content to B's client (not the periodic round: an hour)."""
    async with two_instances(anti_entropy_s=3600) as (a, b, _):
        writer = InProcessClient(a, "/ws/fabric/doc-4")
        await _joined(writer)
        writer.send(ywebsocket.encode_sync_update(_edit("before B")))
        await eventually(lambda: _text(a, "doc-4") == "before B", "A's edit")
        reader = InProcessClient(b, "/ws/fabric/doc-4")
        await eventually(lambda: _text(b, "doc-4") == "before B", "A's content at B",
                         timeout=5)
        await _joined(reader)


async def test_connection_counts_include_the_other_instance() -> None:
    """Heartbeats carry connection counts: each instance counts the other's clients."""
    async with two_instances() as (a, b, _):
        clients = [InProcessClient(a, "/ws/fabric/doc-5"), InProcessClient(b, "/ws/fabric/doc-5"),
                   InProcessClient(b, "/ws/fabric/doc-5")]
        for client in clients:
            await _joined(client)
        await eventually(lambda: a.get_connection_count(document_id="doc-5") == 3,
                         "A to count B's clients")
        await eventually(lambda: b.get_connection_count(document_id="doc-5") == 3,
                         "B to count A's client")
        clients[1].leave()
        await eventually(lambda: a.get_connection_count(document_id="doc-5") == 2,
                         "A to see B's client leave")


@pytest.mark.parametrize("kind", [wire.UPDATE, wire.AWARENESS, wire.JSON_ALL, wire.JSON_CLIENT,
                                  wire.STATE_VECTOR, wire.STEPS, wire.STATELESS, wire.HEARTBEAT,
                                  wire.DIGEST, wire.CONTROL], ids=chr)
async def test_a_malformed_cluster_message_is_ignored(kind: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A message of any kind whose body is garbage is logged and dropped: nothing raises in
    the broker's callback, and the next good update still crosses."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    async with two_instances() as (a, b, hub):
        reader = InProcessClient(b, "/ws/fabric/doc-6")
        await _joined(reader)
        intruder = MemoryBroker(hub)
        channel = f"{b.settings.broker_prefix}:doc:doc-6"
        cluster_channel = f"{b.settings.broker_prefix}:cluster"
        with caplog.at_level(logging.WARNING, logger="captify_ws.cluster"):
            for body in (b"\xff\xfe\xfd", b"[1,2]", b'{"version":"x"}', b"\x05\x01"):
                for target in (channel, cluster_channel):
                    intruder.publish(target, wire.encode(kind, "intruder", body))
            writer = InProcessClient(a, "/ws/fabric/doc-6")
            await _joined(writer)
            writer.send(ywebsocket.encode_sync_update(_edit("still fine")))
            await eventually(lambda: _text(b, "doc-6") == "still fine", "the good update at B")
    assert errors == []
    assert all("Traceback" not in record.getMessage() for record in caplog.records)


async def test_a_backends_published_steps_reach_json_clients_of_every_instance() -> None:
    """A message on the publish channel (a backend in any language) reaches the JSON
    clients of the document on each instance; a bad one is refused with a warning."""
    async with two_instances() as (a, b, hub):
        clients = [InProcessClient(a, "/ws/fabric", {"documentId": "doc-7", "clientID": "x"}),
                   InProcessClient(b, "/ws/fabric", {"documentId": "doc-7", "clientID": "y"})]
        for client in clients:
            await _joined(client)
        backend = MemoryBroker(hub)
        publish = f"{a.settings.broker_prefix}:publish"
        backend.publish(publish, b'{"type":"steps","documentId":"doc-7"}')
        backend.publish(publish, json.dumps({
            "type": "steps", "documentId": "doc-7", "changeId": "c1",
            "steps": [{"stepType": "replace", "from": 1, "to": 1, "slice": {"content": [
                {"type": "text", "text": "x"}]}}]}).encode())

        def every_client_got_steps() -> bool:
            return all(any(m["type"] == "steps" for m in client.texts()) for client in clients)

        await eventually(every_client_got_steps, "the steps at each client")
