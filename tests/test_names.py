"""One name, one document: a document name is percent-decoded exactly once, identically on both
transports, in the y-websocket path, the JSON ``documentId``, the HTTP API and the cluster."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws.errors import BadRequest
from captify_ws.protocol import names, ywebsocket
from captify_ws.transport.asgi import raw_path
from tests.helpers import JsonClient, RunningServer, providers, running_server
from tests.polling import eventually

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}

#: Characters RFC 3986 lets a path carry unencoded (besides letters and digits).
_PCHAR = set("-._~!$&'()*+,;=:@/")

#: Names made of what tends to break decoding: %, /, spaces, dots, + and any Unicode.
name_text = st.one_of(
    st.lists(st.sampled_from([*list("%/ .+?#&=ab25Ü😀"), "..", "%25", "%2F", "%20"]),
             min_size=1, max_size=16).map("".join),
    st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40),
    st.sampled_from(["..", "../x", "a/../b", ".", "%", "%zz", "100%", "x" * names.MAX_NAME_CHARS,
                     "lit%20x", "lit x", "with space/and slash"]),
)


@st.composite
def encoded(draw: st.DrawFn, name: str) -> str:
    """One of the many raw paths that decode once to ``name``: each character either
    percent-encoded (UTF-8) or, where a path may carry it, as it is."""
    out = []
    for char in name:
        plain = (char.isascii() and char.isalnum()) or char in _PCHAR
        # A '.' or '..' segment left plain would be normalised away by URL parsers; '%' must
        # always be encoded to stand for itself.
        if plain and char != "." and draw(st.booleans()):
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


@given(data=st.data(), name=name_text)
@settings(max_examples=400, deadline=None)
def test_any_encoding_of_a_name_decodes_to_it_once(data: st.DataObject, name: str) -> None:
    """Every raw path that encodes a name gives that name back, on the native path (raw
    request line) and through an ASGI server's decoded path + raw_path."""
    raw = data.draw(encoded(name))
    assert names.name_from_path(raw) == name
    # What uvicorn puts in the scope for /ws/fabric/<raw>: path decoded once, raw_path as sent.
    scope = {"path": unquote("/ws/fabric/" + raw), "raw_path": ("/ws/fabric/" + raw).encode()}
    assert raw_path(scope) == "/ws/fabric/" + raw
    # An ASGI server that gives no raw_path: the decoded path is re-encoded, decoded once.
    assert names.name_from_path(raw_path({"path": "/ws/fabric/" + name})[len("/ws/fabric/"):]) \
        == name


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "empty document name"),
    ("x" * (names.MAX_NAME_CHARS + 1), "characters long"),
    ("a\x00b", "control character U+0000"),
    ("a\nb", "control character U+000A"),
    ("\ud800", "unpaired UTF-16 surrogate"),
])
def test_names_that_cannot_be_are_refused_saying_why(bad: str, reason: str) -> None:
    """Empty, too long, control characters, lone surrogates: BadRequest naming the fault."""
    with pytest.raises(BadRequest, match=re.escape(reason)):
        names.check_name(bad)
    with pytest.raises(BadRequest, match="not UTF-8"):
        names.name_from_path("%C3%28")


def _update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


def _read_text(update: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return str(doc.get("text", type=Text))


async def _write_by_path(srv: RunningServer, raw: str, text: str) -> None:
    """A y-websocket client on /ws/fabric/<raw> sends one update and waits for its echo."""
    async with connect(f"{srv.ws}/ws/fabric/{raw}", max_queue=None) as ws:
        frame = ywebsocket.encode_sync_update(_update(text))
        await ws.send(frame)
        while await asyncio.wait_for(ws.recv(), 5) != frame:
            pass


async def _json_sees(srv: RunningServer, name: str, text: str) -> None:
    url = f"{srv.ws}/ws/fabric?{urlencode({'documentId': name, 'clientID': 'reader'})}"
    async with connect(url, max_queue=None) as ws:
        client = JsonClient(ws, name)
        connected = await client.expect("connected")
        assert connected["documentId"] == name
        await client.sync()
        assert str(client.text) == text


async def _check_names(transport: str, batch: list[tuple[str, str]]) -> None:
    async with running_server(transport, api_key=KEY, room_grace_s=30) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=AUTH) as http:
        for index, (name, raw) in enumerate(batch):
            text = f"doc-{index}"
            await _write_by_path(srv, raw, text)
            assert set(srv.server.rooms.rooms) >= {name}
            await _json_sees(srv, name, text)
            got = await http.get(f"/api/v1/documents/{raw}")
            assert got.status_code == 200, (name, raw, got.text)
            assert got.json()["documentId"] == name
            assert _read_text(base64.b64decode(got.json()["update"])) == text
            posted = await http.post(f"/api/v1/documents/{raw}/updates",
                                     content=_update("api;"),
                                     headers={"content-type": "application/octet-stream"})
            assert posted.json() == {"documentId": name, "stored": True}
        assert set((await http.get("/api/v1/documents")).json()["documents"]) == \
            {name for name, _ in batch}
        assert len(srv.server.rooms.rooms) == len(batch)


@pytest.mark.parametrize("transport", ["native", "asgi"])
@given(data=st.data(), batch=st.lists(name_text, min_size=6, max_size=6, unique=True))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
def test_generated_names_reach_one_document_every_way(transport: str, data: st.DataObject,
                                                     batch: list[str]) -> None:
    """Generated names with %, /, spaces, Unicode, '..' and 512 characters: the y-websocket
    path, the JSON documentId and the HTTP API all reach the same document, on both
    transports."""
    encoded_batch = [(name, data.draw(encoded(name))) for name in batch]
    asyncio.run(_check_names(transport, encoded_batch))


async def test_lit_2520x_is_lit_20x_on_both_transports(transport: str) -> None:
    """ws://…/ws/fabric/lit%2520x opens the document named 'lit%20x' (decoded once), the one
    a JSON client reaches with documentId 'lit%20x' and the API with lit%2520x."""
    async with running_server(transport, api_key=KEY) as srv:
        await _write_by_path(srv, "lit%2520x", "seen")
        assert list(srv.server.rooms.rooms) == ["lit%20x"]
        await _json_sees(srv, "lit%20x", "seen")
        async with httpx.AsyncClient(base_url=srv.http, headers=AUTH) as http:
            got = await http.get("/api/v1/documents/lit%2520x")
            assert got.json()["documentId"] == "lit%20x"
            assert (await http.get("/api/v1/documents/lit%20x")).status_code == 404


async def test_provider_room_names_are_url_paths(transport: str) -> None:
    """A real y-websocket provider puts its room name in the URL as it is: 'lit%2520x' is the
    document 'lit%20x' and 'ü x/y' the document 'ü x/y' on both transports."""
    async with running_server(transport) as srv, providers() as repl:
        for room, name in [("lit%2520x", "lit%20x"), ("ü x/y", "ü x/y")]:
            await repl.call("open", name=room, url=f"{srv.ws}/ws/fabric", doc=room)
            await repl.call("waitSynced", name=room)
            await repl.call("insert", name=room, text=f"from {room}")
            async with connect(f"{srv.ws}/ws/fabric?{urlencode({'documentId': name})}",
                               max_queue=None) as ws:
                client = JsonClient(ws, name)
                await client.expect("connected")
                async def has_text(client: JsonClient = client, room: str = room) -> bool:
                    await client.sync()
                    return str(client.text) == f"from {room}"

                await eventually(has_text, "the provider's text at the JSON client",
                                 interval=0.05)


@pytest.mark.parametrize(("path", "reason"), [
    ("/ws/fabric/" + "x" * (names.MAX_NAME_CHARS + 1), "characters long"),
    ("/ws/fabric/%00", "control character"),
    ("/ws/fabric/%C3%28", "not UTF-8"),
    ("/ws/fabric?documentId=", "missing documentId"),
    ("/ws/fabric?documentId=a%0Ab", "control character"),
])
async def test_bad_names_close_4400_with_the_reason(transport: str, path: str,
                                                    reason: str) -> None:
    """A name that cannot be one is refused with 4400 and a reason that says why."""
    async with running_server(transport, api_key=KEY) as srv:
        async with connect(srv.ws + path, max_queue=None) as ws:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 4400
            assert ws.close_reason is not None and reason in ws.close_reason
        async with httpx.AsyncClient(base_url=srv.http, headers=AUTH) as http:
            for api in ("/api/v1/documents/%C3%28", "/api/v1/documents/",
                        "/api/v1/documents/%00/updates"):
                method = "POST" if api.endswith("/updates") else "GET"
                got = await http.request(method, api, content=b"\x00\x00")
                assert got.status_code == 400 and got.json()["code"] == "bad_document_name", \
                    (api, got.text)
