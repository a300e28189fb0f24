"""HTTP on the WebSocket port: health, 404 for unknown WebSocket paths, the API and its key."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from captify_ws.errors import InvalidMessage
from captify_ws.protocol.cluster import decode_external
from tests.helpers import json_client, running_server

UPGRADE = (b"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


async def _raw_upgrade(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE.replace(b"{path}", path.encode()))
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return head


async def test_healthz(transport: str) -> None:
    """GET /healthz answers 200 {"status":"ok"} as JSON naming the instance; HEAD the same
    without the body."""
    async with running_server(transport) as srv, httpx.AsyncClient() as http:
        response = await http.get(f"{srv.http}/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-captify-instance"] == srv.server.instance_id
        assert "date" in response.headers
        head = await http.head(f"{srv.http}/healthz?probe=1")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == response.headers["content-length"]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(b":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return int(lines[0].split(b" ")[1]), headers, body


async def test_healthz_keeps_the_connection_for_later_requests(transport: str) -> None:
    """/healthz then two more requests in one write are answered in order on the same
    connection; a request with Connection: close is answered, then the connection closes."""
    async with running_server(transport) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [await _answer(reader) for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 404, 200]
        assert answers[0][2] == answers[2][2] == b'{"status":"ok"}'
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _answer(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = await _answer(reader)
        assert (status, body) == (200, b'{"status":"ok"}')
        assert headers[b"connection"] == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_healthz_with_a_body_or_another_method_goes_to_the_app(transport: str) -> None:
    """Only a plain GET/HEAD /healthz is answered before the app: a POST is refused (405) and
    a GET with a body is answered after its body, as the app does."""
    async with running_server(transport) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert (await _answer(reader))[0] == 405
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert (await _answer(reader))[:3:2] == (200, b'{"status":"ok"}')
        writer.close()


async def test_unknown_websocket_path_is_refused_with_404(transport: str) -> None:
    """An upgrade to an unknown /ws/ path gets HTTP 404, never 101."""
    async with running_server(transport) as srv:
        head = await _raw_upgrade(srv.port, "/ws/nothing-here")
        assert head.startswith(b"HTTP/1.1 404"), head
        ok = await _raw_upgrade(srv.port, "/ws/fabric?documentId=x")
        assert ok.startswith(b"HTTP/1.1 101"), ok


async def test_api_is_off_without_a_key(transport: str) -> None:
    """With no API key configured the API answers 404 saying how to turn it on."""
    async with running_server(transport) as srv, httpx.AsyncClient() as http:
        response = await http.get(f"{srv.http}/api/v1/connections?handler=fabric")
        assert response.status_code == 404
        assert "CAPTIFY_WS_API_KEY" in response.json()["error"]


async def test_api_needs_the_key(transport: str) -> None:
    """Without or with a wrong bearer key: 401. With it: the counts."""
    async with running_server(transport, api_key="s3cret") as srv, \
            httpx.AsyncClient() as http:
        url = f"{srv.http}/api/v1/connections?handler=fabric"
        assert (await http.get(url)).status_code == 401
        wrong = await http.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = await http.get(url, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json() == {"count": 0}


async def test_connection_counts_by_document_and_handler(transport: str) -> None:
    """GET /api/v1/connections counts per document and per handler."""
    auth = {"Authorization": "Bearer k"}
    async with running_server(transport, api_key="k") as srv, httpx.AsyncClient() as http, \
            json_client(srv, "d1", "a"), json_client(srv, "d1", "b"), json_client(srv, "d2", "c"):
        base = f"{srv.http}/api/v1/connections"
        assert (await http.get(f"{base}?documentId=d1", headers=auth)).json() == {"count": 2}
        assert (await http.get(f"{base}?documentId=d2", headers=auth)).json() == {"count": 1}
        assert (await http.get(f"{base}?documentId=nope", headers=auth)).json() == {"count": 0}
        assert (await http.get(f"{base}?handler=fabric", headers=auth)).json() == {"count": 3}
        assert (await http.get(f"{base}?handler=zzz", headers=auth)).status_code == 404
        assert (await http.get(base, headers=auth)).status_code == 400


async def test_post_steps_reaches_clients(transport: str) -> None:
    """POST /api/v1/documents/{id}/steps broadcasts; with clientID only that client gets it."""
    auth = {"Authorization": "Bearer k"}
    async with running_server(transport, api_key="k") as srv, httpx.AsyncClient() as http, \
            json_client(srv, "doc/with slash", "a") as a, \
            json_client(srv, "doc/with slash", "b") as b:
        url = f"{srv.http}/api/v1/documents/doc%2Fwith%20slash/steps"
        step = {"stepType": "replace", "from": 1, "to": 1,
                "slice": {"content": [{"type": "text", "text": "hi"}]}}
        response = await http.post(url, headers=auth, json={"steps": [step], "changeId": "c1"})
        assert response.status_code == 200, response.text
        assert response.json()["applied"] is True
        for client in (a, b):
            steps = await client.expect("steps")
            assert steps["data"] == {"version": 0, "steps": [step], "clientIDs": ["server"],
                                     "changeId": "c1"}
            assert steps["documentId"] == "doc/with slash"
        again = await http.post(url, headers=auth, json={"steps": [step], "changeId": "c1"})
        assert again.json()["duplicate"] is True  # idempotent on changeId
        stale = await http.post(url, headers=auth, json={"steps": [step], "changeId": "c3",
                                                         "version": 0})
        assert stale.status_code == 409 and stale.json()["version"] == 1
        invalid = await http.post(url, headers=auth, json={"changeId": "c4", "steps": [
            {"stepType": "replace", "from": 50, "to": 50}]})
        assert invalid.status_code == 400 and invalid.json()["code"] == "invalid_steps"
        response = await http.post(url, headers=auth, json={"steps": [], "changeId": "c2",
                                                             "clientID": "b"})
        assert response.json()["delivered"] == 1
        assert (await b.expect("steps"))["data"]["changeId"] == "c2"
        assert await a.quiet(0.2) == []
        bad = await http.post(url, headers=auth, json={"changeId": "x"})
        assert bad.status_code == 400
        assert (await http.post(url, json={"steps": [], "changeId": 1})).status_code == 401


async def test_other_requests_go_to_the_http_app(transport: str) -> None:
    """http_app gets every request that is not a captify-ws route, on the same port."""
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello from the product")

    product = Starlette(routes=[Route("/", hello), Route("/about", hello)])
    async with running_server(transport, http_app=product) as srv, httpx.AsyncClient() as http:
        assert (await http.get(f"{srv.http}/about")).text == "hello from the product"
        assert (await http.get(f"{srv.http}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{srv.http}/missing")).status_code == 404
        async with json_client(srv, "same-port", "a") as a:
            await a.sync()


#: Steps publications that break the contract, each in one way (README "Scaling out").
BAD_STEPS = [
    ["not", "an", "object"],
    {"changeId": "c"},
    {"steps": {"0": {}}, "changeId": "c"},
    {"steps": []},
    {"steps": [], "changeId": "c", "clientID": 7},
    {"steps": [], "changeId": "c", "version": "3"},
    {"steps": [], "changeId": "c", "version": True},
]


async def test_a_bad_steps_publication_is_refused_alike_over_http_and_the_publish_channel(
        transport: str) -> None:
    """The steps contract has one validator: each bad publication gets 400 over HTTP with the
    same reason the publish channel's decoder gives, and no client receives anything."""
    auth = {"Authorization": "Bearer k"}
    async with running_server(transport, api_key="k") as srv, httpx.AsyncClient() as http, \
            json_client(srv, "d", "a") as client:
        url = f"{srv.http}/api/v1/documents/d/steps"
        for body in BAD_STEPS:
            over_redis = ({"type": "steps", "documentId": "d", **body}
                          if isinstance(body, dict) else body)
            with pytest.raises(InvalidMessage) as refused:
                decode_external(json.dumps(over_redis).encode())
            response = await http.post(url, headers=auth, json=body)
            assert response.status_code == 400, (body, response.text)
            if isinstance(body, dict):
                assert response.json() == {"error": refused.value.message}, body
        step = {"stepType": "replace", "from": 1, "to": 1,
                "slice": {"content": [{"type": "text", "text": "hi"}]}}
        good = await http.post(url, headers=auth, json={"steps": [step], "changeId": "ok"})
        assert good.status_code == 200, good.text
        assert (await client.expect("steps"))["data"]["changeId"] == "ok"
