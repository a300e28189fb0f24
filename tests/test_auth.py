"""Authentication, authorization, revocation and origin checks, against real servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pycrdt import Doc, Text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captify_ws.cli import _QuietUvicorn
from captify_ws.protocol import ywebsocket
from tests.helpers import (
    VENV_BIN,
    JsonClient,
    ServerProcess,
    running_server,
    uvicorn_started,
)

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(sub: str = "alice", *, key: Any = SECRET, algorithm: str = "HS256",
          **claims: Any) -> str:
    body = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key, algorithm=algorithm)


async def closed_with(url: str, **kwargs: Any) -> tuple[int | None, str | None]:
    """Connect, read until the server closes; the close code and reason."""
    async with connect(url, **kwargs) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code, ws.close_reason


async def first_message(url: str, **kwargs: Any) -> Any:
    async with connect(url, **kwargs) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 5))


@contextlib.asynccontextmanager
async def product_app(routes: list[Route]) -> AsyncIterator[str]:
    """The product's own HTTP app (session and access endpoints), on a free port."""
    config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=0,
                            log_config=None, lifespan="off")
    sock = config.bind_socket()
    server = _QuietUvicorn(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await uvicorn_started(server, task)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


# -- the default, and binding beyond loopback ----------------------------------------------


def test_non_loopback_bind_needs_an_authenticator() -> None:
    """serve --host 0.0.0.0 without --auth refuses to start and names the options."""
    result = subprocess.run([str(VENV_BIN / "captify-ws"), "serve", "--host", "0.0.0.0",
                             "--port", "0", "--store", "memory"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    for option in ("--auth session-proxy", "--auth jwt", "--auth module:function",
                   "--auth none"):
        assert option in message


def test_explicit_none_on_any_address_starts_with_a_warning() -> None:
    """--auth none is allowed everywhere, with a loud warning."""
    proc = ServerProcess(["--host", "0.0.0.0", "--port", "0", "--auth", "none",
                          "--store", "memory"]).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5).status_code == 200
    finally:
        proc.stop()
    assert "authentication is off" in proc.log


# -- session proxy -------------------------------------------------------------------------


async def test_session_proxy_forwards_the_cookie_and_caches() -> None:
    """The product's session endpoint decides; a good cookie gets in, others close 4401;
    answers are cached per cookie."""
    calls: list[str | None] = []

    async def session(request: Request) -> JSONResponse:
        calls.append(request.headers.get("cookie"))
        if request.headers.get("cookie") == "next-auth.session-token=good":
            return JSONResponse({"user": {"id": "u-1", "name": "Ann"}, "expires": "never"})
        return JSONResponse({}, status_code=200)  # NextAuth answers {} without a session

    async with product_app([Route("/api/auth/session", session)]) as product, \
            running_server(auth="session-proxy",
                           auth_session_url=f"{product}/api/auth/session") as srv:
        url = srv.fabric("doc", "c1")
        good = {"additional_headers": {"Cookie": "next-auth.session-token=good"}}
        assert (await first_message(url, **good))["type"] == "connected"
        assert (await first_message(url, **good))["type"] == "connected"
        assert calls.count("next-auth.session-token=good") == 1  # cached
        bad = {"additional_headers": {"Cookie": "next-auth.session-token=forged"}}
        assert (await closed_with(url, **bad))[0] == 4401
        assert (await closed_with(url))[0] == 4401  # no cookie at all


async def test_slow_authenticator_closes_4408() -> None:
    """An authenticator that does not answer in time: close 4408."""
    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(3)
        return JSONResponse({"user": {"id": "late"}})

    async with product_app([Route("/session", slow)]) as product, \
            running_server(auth="session-proxy", auth_session_url=f"{product}/session",
                           auth_timeout_s=0.5) as srv:
        code, reason = await closed_with(srv.fabric("doc"),
                                         additional_headers={"Cookie": "s=1"})
        assert code == 4408
        assert reason == "authentication timed out"


# -- JWT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query", "cookie", "subprotocol"])
async def test_jwt_from_every_place(transport: str, where: str) -> None:
    """A valid token in the header, ?token=, a cookie or Sec-WebSocket-Protocol gets in."""
    good = token("alice")
    async with running_server(transport, auth="jwt", jwt_secret=SECRET) as srv:
        url = srv.fabric("doc", "c1")
        kwargs: dict[str, Any] = {}
        if where == "header":
            kwargs["additional_headers"] = {"Authorization": f"Bearer {good}"}
        elif where == "query":
            url += f"&token={good}"
        elif where == "cookie":
            kwargs["additional_headers"] = {"Cookie": f"other=1; captify_token={good}"}
        else:
            kwargs["subprotocols"] = ["captify", good]
        async with connect(url, **kwargs) as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
            if where == "subprotocol":
                assert ws.subprotocol == "captify"  # the token is never echoed


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": int(time.time()) - 3600}, "token expired"),
    ({"nbf": int(time.time()) + 3600}, "token not valid yet"),
    ({"aud": "someone-else"}, "wrong audience"),
    ({"iss": "https://evil.example"}, "wrong issuer"),
])
async def test_jwt_claims_are_checked(claims: dict[str, Any], reason: str) -> None:
    """exp, nbf, aud and iss are enforced: close 4401 with the reason."""
    async with running_server(auth="jwt", jwt_secret=SECRET, jwt_audience="captify",
                              jwt_issuer="https://app.example", jwt_leeway_s=0) as srv:
        bad = token(**{"aud": "captify", "iss": "https://app.example", **claims})
        code, got = await closed_with(srv.fabric("doc") + f"&token={bad}")
        assert (code, got) == (4401, f"Unauthorized: {reason}")
        ok = token(aud="captify", iss="https://app.example")
        assert (await first_message(srv.fabric("doc") + f"&token={ok}"))["type"] == "connected"


async def test_jwt_bad_signature_and_missing_token() -> None:
    """A token signed with another key, or none at all: 4401."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv:
        forged = token(key="another-secret-that-is-also-long-enough!!")
        assert (await closed_with(srv.fabric("doc") + f"&token={forged}"))[0] == 4401
        assert await closed_with(srv.fabric("doc")) == (4401, "Unauthorized: no token")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_jwt_public_key_algorithms(algorithm: str, tmp_path: Any) -> None:
    """RS256 and ES256 tokens verify against a PEM public key (given as @file)."""
    private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048) \
        if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    async with running_server(auth="jwt", jwt_public_key=f"@{tmp_path / 'key.pem'}",
                              jwt_algorithms=(algorithm,)) as srv:
        good = token(key=private, algorithm=algorithm)
        assert (await first_message(srv.fabric("d") + f"&token={good}"))["type"] == "connected"
        hs = token()  # an HS256 token is not accepted when only RS/ES is configured
        assert (await closed_with(srv.fabric("d") + f"&token={hs}"))[0] == 4401


async def test_custom_authenticator_by_import_path() -> None:
    """--auth module:function uses the product's own function."""
    async with running_server(auth="tests.outside.auth_hooks:authenticate") as srv:
        url = srv.fabric("doc")
        assert (await first_message(url + "&ticket=open-sesame"))["type"] == "connected"
        assert await closed_with(url + "&ticket=nope") == (4401, "bad ticket")


# -- authorization -------------------------------------------------------------------------


def _update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def test_jwt_claims_authorizer_write_read_none(transport: str) -> None:
    """docs claim: write → edits apply; read → sync works, edits refused (told once);
    no match → 4403."""
    claims = {"docs": {"team/*": "write", "public-*": "read"}}
    async with running_server(transport, auth="jwt", jwt_secret=SECRET,
                              authorizer="jwt-claims") as srv:
        bob = token("bob", **claims)
        assert (await closed_with(srv.fabric("secret-doc") + f"&token={bob}"))[0] == 4403
        # JSON client, read-only document
        async with connect(srv.fabric("public-1", "bob") + f"&token={bob}") as ws:
            client = JsonClient(ws, "public-1")
            await client.expect("connected")
            await client.sync()
            await client.send({"type": "update", "documentId": "public-1",
                               "data": base64.b64encode(_update("x")).decode()})
            error = await client.expect("error")
            assert error["message"] == "Access denied"
            assert error["data"] == {"code": "read_only"}
        # y-websocket client, read-only: sync answered, update dropped, told once
        async with connect(f"{srv.ws}/ws/fabric/public-1?token={bob}") as ws:
            assert (await ws.recv())[:2] == b"\x00\x00"  # server's sync step 1
            await ws.send(ywebsocket.encode_sync_step1(b"\x00"))
            assert (await ws.recv())[:2] == b"\x00\x01"  # step 2: sync works
            await ws.send(ywebsocket.encode_sync_update(_update("nope")))
            await ws.send(ywebsocket.encode_sync_update(_update("nope2")))
            told = await ws.recv()
            assert ywebsocket.decode_message(told) == ywebsocket.AuthMessage(True, "read-only")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)  # only once
        assert str((await srv.server.get_document("public-1")) or b"").find("nope") < 0
        # write access
        async with connect(f"{srv.ws}/ws/fabric/team/plan?token={bob}") as ws:
            await ws.recv()
            await ws.send(ywebsocket.encode_sync_update(_update("yes")))
            echo = await ws.recv()
            assert ywebsocket.decode_message(echo) == ywebsocket.SyncUpdate(
                _update("yes"), echo) or echo[:2] == b"\x00\x02"


async def test_access_proxy_authorizer() -> None:
    """access-proxy asks the product per document and user."""
    async def access(request: Request) -> JSONResponse:
        body = await request.json()
        level = {"mine": "write", "shared": "read"}.get(body["documentId"], "none")
        return JSONResponse({"access": level})

    async with product_app([Route("/access", access, methods=["POST"])]) as product, \
            running_server(auth="jwt", jwt_secret=SECRET, authorizer="access-proxy",
                           auth_access_url=f"{product}/access") as srv:
        t = token("carol")
        assert (await first_message(srv.fabric("mine") + f"&token={t}"))["type"] == "connected"
        assert (await first_message(srv.fabric("shared") + f"&token={t}"))["type"] == \
            "connected"
        assert (await closed_with(srv.fabric("theirs") + f"&token={t}"))[0] == 4403


# -- revocation ----------------------------------------------------------------------------


async def test_revoke_closes_or_downgrades_live_connections(transport: str) -> None:
    """POST …/revoke: to none closes the user's connections with 4403 and keeps them out;
    to read turns them read-only at once. Other users are untouched."""
    async with running_server(transport, auth="jwt", jwt_secret=SECRET, api_key="k") as srv, \
            httpx.AsyncClient(timeout=10) as http:
        dave, erin = token("dave"), token("erin")

        async def join(user_token: str, client_id: str) -> JsonClient:
            ws = await connect(srv.fabric("board", client_id) + f"&token={user_token}",
                               max_queue=None)
            client = JsonClient(ws, "board")
            await client.expect("connected")
            return client

        d1, d2, e1 = await join(dave, "d1"), await join(dave, "d2"), await join(erin, "e1")
        revoke = f"{srv.http}/api/v1/documents/board/revoke"
        answer = await http.post(revoke, headers={"Authorization": "Bearer k"},
                                 json={"userId": "dave", "to": "read"})
        assert answer.json()["connections"] == 2
        await d1.edit("blocked")
        assert (await d1.expect("error"))["message"] == "Access denied"
        await e1.edit("erin-ok")  # erin can still write
        d2.apply(await d2.expect("update"))
        await http.post(revoke, headers={"Authorization": "Bearer k"},
                        json={"userId": "dave", "to": "none"})
        for client in (d1, d2):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await client.recv(5)
            assert client.ws.close_code == 4403
        assert (await closed_with(srv.fabric("board") + f"&token={dave}"))[0] == 4403
        await e1.edit(" still here")
        await e1.ws.close()


# -- origins -------------------------------------------------------------------------------


async def test_cross_site_upgrade_is_refused(transport: str) -> None:
    """With an origin allowlist, a page from another site cannot open a WebSocket."""
    async with running_server(transport, allowed_origins=("https://app.example.com",
                                                          "https://*.example.org")) as srv:
        url = srv.fabric("doc")
        with pytest.raises(InvalidStatus) as refused:
            await first_message(url, origin="https://evil.example.net")
        assert refused.value.response.status_code == 403
        for origin in ("https://app.example.com", "https://docs.example.org"):
            assert (await first_message(url, origin=origin))["type"] == "connected"
        assert (await first_message(url))["type"] == "connected"  # no Origin: not a browser
