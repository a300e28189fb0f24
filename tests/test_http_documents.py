"""The documents API (http_documents.py) in process: the ASGI app of a started Server, driven
by httpx's ASGI transport, with in-process clients that see what the API does."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from captify_ws.app import create_app
from captify_ws.server import Server
from tests.helpers import test_settings as settings_for
from tests.inprocess import InProcessClient
from tests.polling import eventually

pytestmark = pytest.mark.unit

KEY = {"authorization": "Bearer k"}


@contextlib.asynccontextmanager
async def api(**overrides: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    server = Server(settings_for(api_key="k", **overrides))
    await server.start()
    transport = httpx.ASGITransport(app=create_app(server=server))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=KEY) as http:
            yield server, http
    finally:
        await server.stop(timeout=2)


def _update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    shared = doc.get("text", type=Text)
    shared += text
    return updates[0]


def _text(state: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return str(doc.get("text", type=Text))


async def test_a_documents_life_over_http() -> None:
    """POST an update (binary or JSON base64): stored when answered, listed, readable as
    JSON or bytes, counted connections, deleted (then 404)."""
    async with api() as (server, http):
        posted = await http.post("/api/v1/documents/notes/updates", content=_update("one;"))
        assert posted.json() == {"documentId": "notes", "stored": True}
        stored = await server.store.load("notes")
        assert stored is not None and _text(stored.as_update()) == "one;"
        posted = await http.post("/api/v1/documents/notes/updates", json={
            "update": base64.b64encode(_update("two;")).decode()})
        assert posted.status_code == 200
        assert (await http.get("/api/v1/documents")).json() == {"documents": ["notes"]}
        as_json = (await http.get("/api/v1/documents/notes")).json()
        assert sorted(_text(base64.b64decode(as_json["update"])).split(";")) == \
            ["", "one", "two"]
        raw = await http.get("/api/v1/documents/notes",
                             headers={"accept": "application/octet-stream"})
        assert raw.headers["content-type"] == "application/octet-stream"
        assert _text(raw.content) == _text(base64.b64decode(as_json["update"]))
        client = InProcessClient(server, "/ws/fabric/notes")
        await eventually(lambda: client.frames, "the client to join")
        counted = await http.get("/api/v1/connections", params={"documentId": "notes"})
        assert counted.json() == {"count": 1}
        client.leave()
        assert (await http.delete("/api/v1/documents/notes")).json() == {"deleted": True}
        assert (await http.get("/api/v1/documents/notes")).status_code == 404
        assert (await http.delete("/api/v1/documents/notes")).status_code == 404


async def test_an_update_posted_reaches_the_documents_clients() -> None:
    """A backend's update is relayed to a JSON client of the document at once."""
    async with api() as (server, http):
        client = InProcessClient(server, "/ws/fabric", {"documentId": "live", "clientID": "c"})
        await eventually(client.texts, "the connected message")
        await http.post("/api/v1/documents/live/updates", content=_update("from the backend"))
        await eventually(lambda: any(m["type"] == "update" for m in client.texts()),
                         "the update at the client")


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "says"), [
    ("POST", "/api/v1/documents/d/updates", {"content": b"\x05\x05\x05"}, 400, ""),
    ("POST", "/api/v1/documents/d/updates",
     {"content": b"{}", "headers": {"content-type": "application/json"}}, 400, "update"),
    ("POST", "/api/v1/documents/d/updates",
     {"content": b"[1]", "headers": {"content-type": "application/json"}}, 400, "update"),
    ("POST", "/api/v1/documents/d/steps", {"content": b"not json"}, 400, "JSON"),
    ("POST", "/api/v1/documents/d/steps", {"json": {"steps": "x"}}, 400, ""),
    ("POST", "/api/v1/documents/d/revoke", {"json": {"to": "none"}}, 400, "userId"),
    ("POST", "/api/v1/documents/d/revoke", {"json": {"userId": "u", "to": "all"}}, 400,
     "userId"),
    ("GET", "/api/v1/connections", {}, 400, "exactly one"),
    ("GET", "/api/v1/connections", {"params": {"documentId": "d", "handler": "fabric"}}, 400,
     "exactly one"),
    ("GET", "/api/v1/connections", {"params": {"handler": "nope"}}, 404, "nope"),
    ("GET", "/api/v1/documents/%00bad", {}, 400, ""),
], ids=["not-yjs", "json-without-update", "json-not-object", "steps-not-json",
        "steps-not-list", "revoke-no-user", "revoke-bad-to", "connections-neither",
        "connections-both", "unknown-handler", "control-char-name"])
async def test_bad_requests_get_a_clear_error_and_change_nothing(
        method: str, path: str, kwargs: dict[str, Any], status: int, says: str) -> None:
    """Each bad request is answered with its status and an error saying what is wrong; no
    document is created."""
    async with api() as (server, http):
        answer = await http.request(method, path, **kwargs)
        assert answer.status_code == status, answer.text
        assert says in answer.json()["error"]
        assert await server.store.list_documents() == []


async def test_steps_and_revocation_over_http() -> None:
    """Steps posted for a document are applied at its version (a stale version is 409);
    a revocation answers how many connections it changed."""
    async with api() as (_server, http):
        step = {"stepType": "replace", "from": 0, "to": 0, "slice": {"content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]}}
        first = await http.post("/api/v1/documents/pm/steps", json={
            "steps": [step], "changeId": "c1", "version": 0})
        assert first.status_code == 200, first.text
        # ``version`` in an answer is the version the change's steps apply to (README)
        assert first.json()["version"] == 0 and first.json()["applied"] is True, first.json()
        again = await http.post("/api/v1/documents/pm/steps", json={
            "steps": [step], "changeId": "c1", "version": 5})
        assert again.json()["duplicate"] is True and again.json()["version"] == 0
        stale = await http.post("/api/v1/documents/pm/steps", json={
            "steps": [step], "changeId": "c2", "version": 0})
        assert stale.status_code == 409 and stale.json()["code"] == "version_behind"
        assert stale.json()["version"] == 1
        bad = await http.post("/api/v1/documents/pm/steps", json={
            "steps": [{"stepType": "replace", "from": 999, "to": 999}], "changeId": "c3"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_steps"
        revoked = await http.post("/api/v1/documents/pm/revoke", json={"userId": "ann"})
        assert revoked.json() == {"documentId": "pm", "userId": "ann", "to": "none",
                                  "connections": 0}
