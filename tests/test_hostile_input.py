"""Hostile input gets its 4xx / 1007 / 4401, never a 1011, a 500 or a logged traceback (issue 13,
items 10 and 11), and errors tell clients nothing about the server's insides (issue 12, item 10).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws.protocol import envelope, ywebsocket
from captify_ws.store import store_from_url
from tests.helpers import json_client, running_server
from tests.polling import eventually
from tests.services import fresh_database

API_KEY = "hostile-input-key"
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The test fails if the server logged a traceback (an exception nobody expected)."""
    caplog.set_level(logging.INFO)
    yield
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert not tracebacks, [record.getMessage() for record in tracebacks]


async def _close_code(ws: Any) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    code: int | None = ws.close_code
    return code


@pytest.mark.usefixtures("no_tracebacks")
async def test_deep_json_over_websocket_closes_4400(transport: str) -> None:
    """JSON nested 5,000 deep on the JSON protocol closes 4400 (as a message and as a presence
    state); on y-websocket, a presence state nested that deep closes 1007."""
    async with running_server(transport) as srv:
        for message in (DEEP, json.dumps({"type": "awareness", "documentId": "deep"})[:-1]
                        + ',"data":' + DEEP + "}"):
            async with json_client(srv, "deep") as client:
                await client.send(message)
                assert await _close_code(client.ws) == 4400
        async with connect(f"{srv.ws}/ws/fabric/deep") as ws:
            await ws.recv()
            await ws.send(ywebsocket.encode_awareness([ywebsocket.AwarenessEntry(5, 1, DEEP)]))
            assert await _close_code(ws) == 1007


@pytest.mark.usefixtures("no_tracebacks")
async def test_deep_json_over_the_api_is_400(transport: str) -> None:
    """The same JSON sent to every JSON endpoint of the HTTP API: 400, never 500."""
    async with running_server(transport, api_key=API_KEY) as srv, \
            httpx.AsyncClient(base_url=srv.http,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for path, content_type in (("/api/v1/documents/deep/steps", "application/json"),
                                   ("/api/v1/documents/deep/updates", "application/json"),
                                   ("/api/v1/documents/deep/revoke", "application/json")):
            answer = await http.post(path, content=DEEP,
                                     headers={"Content-Type": content_type})
            assert answer.status_code == 400, (path, answer.text)


@pytest.mark.usefixtures("no_tracebacks")
async def test_deep_steps_are_refused_not_crashed(transport: str) -> None:
    """A step whose slice nests 300 nodes deep (valid JSON) is refused as invalid steps."""
    slice_content: Any = {"type": "text", "text": "x"}
    for _ in range(300):
        slice_content = {"type": "paragraph", "content": [slice_content]}
    steps = [{"stepType": "replace", "from": 1, "to": 1, "slice": {"content": [slice_content]}}]
    async with running_server(transport, api_key=API_KEY) as srv, \
            httpx.AsyncClient(base_url=srv.http,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        answer = await http.post("/api/v1/documents/deep-steps/steps",
                                 json={"steps": steps, "changeId": "c1"})
        assert answer.status_code == 400, answer.text
        async with json_client(srv, "deep-steps") as client:
            await client.send({"type": "steps", "documentId": "deep-steps",
                               "data": {"version": 0, "steps": steps, "clientID": "c"}})
            error = await client.expect("error")
            assert error["data"]["code"] == "invalid_steps"


@pytest.mark.usefixtures("no_tracebacks")
async def test_json_values_bound_the_work_of_a_message(transport: str) -> None:
    """An update in the ``{"0":…}`` form with more values than max_json_values is refused
    before it is parsed, with an error naming base64; the connection stays usable."""
    async with running_server(transport, max_json_values=1000) as srv, \
            json_client(srv, "values") as client:
        data = {str(index): index % 256 for index in range(5000)}
        await client.send({"type": "update", "documentId": "values", "data": data})
        error = await client.expect("error")
        assert "1000 JSON values" in error["message"] and "base64" in error["message"]
        await client.sync()


@pytest.mark.usefixtures("no_tracebacks")
async def test_a_large_message_past_the_values_is_refused_and_one_within_them_applied(
        transport: str) -> None:
    """A 1.3 MB update in the ``{"0":…}`` form past max_json_values gets the same error as a
    small one (the native transport refuses it from its raw bytes, before decoding it); the
    connection stays usable, and a 530 KB message within the limit is still applied."""
    async with running_server(transport, max_json_values=1000) as srv, \
            json_client(srv, "values-big") as client:
        data = {str(index): index % 256 for index in range(100_000)}
        await client.send({"type": "update", "documentId": "values-big", "data": data})
        error = await client.expect("error")
        assert "1000 JSON values" in error["message"] and "base64" in error["message"]
        text = "".join(random.Random(3).choice("abcdef") for _ in range(400_000))
        await client.edit(text)

        async def joiner_sees_it() -> bool:
            # a 530 KB message arrives over many read callbacks: a joiner may sync before it
            async with json_client(srv, "values-big") as other:
                await other.sync()
                return str(other.text) == text

        await eventually(joiner_sees_it, "the message within the limit applied")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=",:ab\"{}[]é", max_size=400), st.integers(0, 150),
       st.integers(8, 64))
def test_raw_bytes_count_values_as_the_text_does(text: str, limit: int, window: int) -> None:
    """Counting separators in the undecoded bytes (a memoryview, scanned window by window)
    answers as counting them in the decoded text, whatever the window size."""
    raw = memoryview(text.encode())
    assert envelope.more_values_than(raw, limit, view_window=window) \
        == envelope.more_values_than(text, limit)


@pytest.mark.usefixtures("no_tracebacks")
async def test_api_body_larger_than_the_message_limit_is_413(transport: str) -> None:
    """A request body past max_message_size is refused with 413 before it is kept."""
    async with running_server(transport, api_key=API_KEY, max_message_size=4096) as srv, \
            httpx.AsyncClient(base_url=srv.http,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        answer = await http.post("/api/v1/documents/big/updates", content=b"\x00" * 10_000,
                                 headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 413

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"\x00" * 1000

        answer = await http.post("/api/v1/documents/big/updates", content=chunks(),
                                 headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 413


def _rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.usefixtures("no_tracebacks")
async def test_hs256_token_signed_with_the_rsa_public_key_is_4401(transport: str) -> None:
    """With RS256,HS256 accepted, a token "signed" with HS256 using the public key as the secret
    (the algorithm-confusion attack) is refused with 4401."""
    public_pem = _rsa_public_pem()
    # PyJWT refuses to sign HS256 with a PEM key; an attacker builds the HMAC by hand.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(
        {"sub": "mallory", "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    async with running_server(transport, auth="jwt", jwt_public_key=public_pem,
                              jwt_algorithms=("RS256", "HS256")) as srv, \
            connect(f"{srv.ws}/ws/fabric/forged?token={token}") as ws:
        assert await _close_code(ws) == 4401


LEAKS = ("postgresql", "captify_test_", "captify_documents", "captify_updates", "relation",
         "does not exist", "127.0.0.1:5432", "Traceback", "/work/", "site-packages")


def _no_leak(text: str) -> None:
    for secret in LEAKS:
        assert secret not in text, (secret, text)


async def test_store_failure_tells_clients_an_error_id_only(transport: str,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """A PostgreSQL store whose tables are gone: the WebSocket client is closed with 1011 and
    "internal error, id …"; the HTTP API and /readyz answer without the store URL, the
    database name or the SQL error; the detail is in the log under the same id."""
    with fresh_database() as url:
        async with running_server(transport, store=store_from_url(url), api_key=API_KEY) as srv:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("DROP TABLE captify_updates, captify_documents CASCADE")
            finally:
                await conn.close()
            async with connect(srv.fabric("gone", "c1")) as ws:
                assert await _close_code(ws) == 1011
                reason = ws.close_reason or ""
            assert reason.startswith("internal error, id "), reason
            error_id = reason.removeprefix("internal error, id ")
            assert any(error_id in record.getMessage() and "does not exist"
                       in record.getMessage() for record in caplog.records)
            async with httpx.AsyncClient(
                    base_url=srv.http, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
                answers = [await http.get("/api/v1/documents/gone"),
                           await http.post("/api/v1/documents/gone/updates",
                                           content=b"\x00\x00",
                                           headers={"Content-Type": "application/octet-stream"}),
                           await http.get("/api/v1/documents"),
                           await http.get("/readyz")]
            for answer in answers:
                assert answer.status_code in (200, 500, 503), answer.text
                _no_leak(answer.text)
            assert any("errorId" in answer.text for answer in answers)
