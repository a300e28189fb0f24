"""The fabric JSON protocol, on both transports, against a real server on a free port."""

from __future__ import annotations

import base64
import json

import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import json_client, running_server


async def test_connected_reports_client_id_and_count(transport: str) -> None:
    """On accept: connected with the given clientID and the connections on the document."""
    async with running_server(transport) as srv:
        async with json_client(srv, "doc-1", "alice") as alice:
            assert alice.connected == {"type": "connected", "documentId": "doc-1",  # type: ignore[attr-defined]
                                       "clientID": "alice", "data": {"connections": 1}}
            async with json_client(srv, "doc-1", "bob") as bob:
                assert bob.connected["data"] == {"connections": 2}  # type: ignore[attr-defined]
            async with json_client(srv, "doc-1") as anonymous:
                assigned = anonymous.connected["clientID"]  # type: ignore[attr-defined]
                assert isinstance(assigned, str) and assigned


async def test_missing_document_id_closes_4400(transport: str) -> None:
    """A connection without documentId is closed with 4400 and a reason."""
    async with running_server(transport) as srv, connect(f"{srv.ws}/ws/fabric") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4400
        assert "documentId" in (ws.close_reason or "")


async def test_seed_sync_is_answered_with_synced(transport: str) -> None:
    """The seed's wscat line {"type":"sync","documentId":"test"} gets a synced message."""
    async with running_server(transport) as srv, json_client(srv, "test", "test") as client:
        await client.send('{"type":"sync","documentId":"test"}')
        synced = await client.expect("synced")
        assert synced["documentId"] == "test"
        assert set(synced["data"]) == {"update", "stateVector"}
        doc: Doc = Doc()
        doc.apply_update(base64.b64decode(synced["data"]["update"]))


async def test_two_clients_converge(transport: str) -> None:
    """Edits from two JSON clients meet in one document, on both clients and the server."""
    async with running_server(transport) as srv, json_client(srv, "conv", "a") as a, \
            json_client(srv, "conv", "b") as b:
        await a.edit("hello ")
        relayed = await b.expect("update")
        assert relayed["clientID"] == "a"
        b.apply(relayed)
        await b.edit("world")
        a.apply(await a.expect("update"))
        assert str(a.text) == str(b.text) == "hello world"
        async with json_client(srv, "conv", "late") as late:
            await late.sync()
            assert str(late.text) == "hello world"
        # the sender does not get its own update back
        assert [m for m in await a.quiet(0.2) if m["type"] == "update"] == []


async def test_sync_with_state_vector_returns_only_the_difference(transport: str) -> None:
    """sync with a stateVector answers with what that state lacks, and the server's vector."""
    async with running_server(transport) as srv, json_client(srv, "diff", "a") as a:
        await a.edit("one")
        await a.sync()  # a now has everything; its own state vector equals the server's
        sv = base64.b64encode(a.doc.get_state()).decode()
        await a.send({"type": "sync", "documentId": "diff", "data": {"stateVector": sv}})
        synced = await a.expect("synced")
        assert base64.b64decode(synced["data"]["update"]) == b"\x00\x00"
        assert base64.b64decode(synced["data"]["stateVector"]) == a.doc.get_state()


async def test_update_shapes_from_browsers_are_accepted(transport: str) -> None:
    """The seed's 'update' key, byte lists and {"0":…} objects all apply."""
    async with running_server(transport) as srv, json_client(srv, "shapes", "a") as a, \
            json_client(srv, "shapes", "b") as b:
        for index, word in enumerate(["x", "y", "z"]):
            doc: Doc = Doc()
            doc.get("text", type=Text).insert(0, word)
            update = doc.get_update()
            shapes = [{"update": base64.b64encode(update).decode()}, {"data": list(update)},
                      {"data": {str(i): byte for i, byte in enumerate(update)}}]
            await a.send({"type": "update", "documentId": "shapes", **shapes[index]})
            b.apply(await b.expect("update"))
        assert sorted(str(b.text)) == ["x", "y", "z"]


@pytest.mark.parametrize(("message", "expected"), [
    ("{oops", "invalid JSON"),
    ('{"type":"teleport","documentId":"errs"}', "unknown message type"),
    ('{"type":"update","documentId":"errs"}', "missing field 'data'"),
    ('{"type":"sync","documentId":"somewhere-else"}', "is not this connection's document"),
    ('{"type":"update","documentId":"errs","data":"AAECAwQF"}', "not a valid Yjs update"),
])
async def test_errors_go_to_the_sender_only(transport: str, message: str, expected: str) -> None:
    """Each bad message gets an error to its sender; the connection and the others carry on."""
    async with running_server(transport) as srv, json_client(srv, "errs", "a") as a, \
            json_client(srv, "errs", "b") as b:
        await a.edit("before")
        b.apply(await b.expect("update"))
        await a.send(message)
        error = await a.expect("error")
        assert expected in error["message"]
        assert error["documentId"] == "errs"
        assert await b.quiet(0.2) == []
        await a.edit(" after")  # the connection stays open and usable
        b.apply(await b.expect("update"))
        assert str(b.text) == "before after"
        async with json_client(srv, "errs", "c") as c:
            await c.sync()
            assert str(c.text) == "before after"  # the invalid update changed nothing


async def test_awareness_relayed_kept_and_removed(transport: str) -> None:
    """awareness is relayed with clientID, sent to joiners, and removed when its client leaves."""
    async with running_server(transport) as srv, json_client(srv, "aw", "a") as a:
        async with json_client(srv, "aw", "b") as b:
            await b.send({"type": "awareness", "documentId": "aw", "data": {"name": "Bob"}})
            seen = await a.expect("awareness")
            assert seen == {"type": "awareness", "documentId": "aw", "clientID": "b",
                            "data": {"name": "Bob"}}
            async with json_client(srv, "aw", "c") as c:
                joined = await c.expect("awareness")
                assert joined["clientID"] == "b" and joined["data"] == {"name": "Bob"}
            assert [m for m in await b.quiet(0.2) if m["type"] == "awareness"
                    and m["clientID"] == "b"] == []  # not echoed to its sender
        gone = await a.expect("awareness", where=lambda m: m["clientID"] == "b")
        assert gone["data"] is None


async def test_selection_relayed_to_others(transport: str) -> None:
    """selection reaches the other members with the sender's clientID."""
    async with running_server(transport) as srv, json_client(srv, "rel", "a") as a, \
            json_client(srv, "rel", "b") as b:
        await a.send({"type": "selection", "documentId": "rel", "data": {"anchor": 1, "head": 4}})
        assert await b.expect("selection") == {"type": "selection", "documentId": "rel",
                                               "clientID": "a", "data": {"anchor": 1, "head": 4}}
        assert [m["type"] for m in await a.quiet(0.2)] == []


async def test_binary_frame_on_json_connection_is_parsed_as_json(transport: str) -> None:
    """A JSON message sent in a binary frame still works; garbage gets an error."""
    async with running_server(transport) as srv, json_client(srv, "bin", "a") as a:
        await a.ws.send(json.dumps({"type": "sync", "documentId": "bin"}).encode())
        assert (await a.expect("synced"))["documentId"] == "bin"
        await a.ws.send(b"\xff\xfe")
        assert "invalid JSON" in (await a.expect("error"))["message"]
