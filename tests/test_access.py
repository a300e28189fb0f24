"""Access control (access.py, authorizers.py, the API-key gate of http_common.py): who gets
in, who may write, what a revocation changes — with in-process clients of a real Server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from captify_ws.access import origin_allowed
from captify_ws.app import create_app
from captify_ws.auth import Access, Principal
from captify_ws.authorizers import JwtClaimsAuthorizer
from captify_ws.connection import UpgradeRequest
from captify_ws.errors import CloseCode, Reject
from captify_ws.server import Server
from captify_ws.store.memory import MemoryStore
from tests.helpers import test_settings as settings_for
from tests.inprocess import InProcessClient
from tests.polling import eventually

pytestmark = pytest.mark.unit


class UserFromQuery:
    """Authentication for tests: the user is the ``user`` query parameter."""

    async def authenticate(self, request: UpgradeRequest) -> Principal:
        user = request.query.get("user")
        if user is None:
            raise Reject(CloseCode.UNAUTHORIZED, "no user")
        return Principal(user, {"docs": {"team/*": "write", "public-*": "read"}})


class SlowAuthorizer:
    """Answers after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def authorize(self, principal: Principal, document_id: str,
                        request: UpgradeRequest) -> Access:
        await asyncio.sleep(self.delay)  # an authorizer that hangs, bounded by the test
        return "write"


@contextlib.asynccontextmanager
async def serving(store: MemoryStore | None = None, authorizer: Any = None,
                  **overrides: Any) -> AsyncIterator[Server]:
    server = Server(settings_for(**overrides), store=store, authenticator=UserFromQuery(),
                    authorizer=authorizer or JwtClaimsAuthorizer())
    await server.start()
    try:
        yield server
    finally:
        await server.stop(timeout=2)


def _client(server: Server, document_id: str, user: str | None, client_id: str = "c",
            **kwargs: Any) -> InProcessClient:
    query = {"documentId": document_id, "clientID": client_id}
    if user is not None:
        query["user"] = user
    return InProcessClient(server, "/ws/fabric", query, **kwargs)


def _update(text: str) -> str:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    shared = doc.get("t", type=Text)
    shared += text
    return base64.b64encode(updates[0]).decode()


def _text(server: Server, document_id: str) -> str:
    room = server.rooms.get(document_id)
    return str(room.doc.get("t", type=Text)) if room is not None else ""


async def _connected(client: InProcessClient) -> None:
    await eventually(lambda: any(m["type"] == "connected" for m in client.texts()),
                     "the connected message")


@pytest.mark.parametrize(("claims", "document_id", "expected"), [
    ({"docs": {"team/*": "write", "team/secret": "read"}}, "team/secret", "write"),
    ({"docs": {"*": "read", "team/a": "write"}}, "team/a", "write"),
    ({"docs": {"public-*": "read"}}, "public-1", "read"),
    ({"docs": ["team/*"]}, "team/b", "write"),
    ({"docs": {"team/*": "admin"}}, "team/c", None),
    ({"docs": {"team/*": "write"}}, "other", None),
    ({"docs": "team/*"}, "team/d", None),
    ({}, "team/e", None),
], ids=["generous-wins", "generous-wins-2", "read", "list-is-write", "unknown-level",
        "no-match", "not-a-mapping", "no-claim"])
async def test_jwt_claims_decide_read_or_write(claims: dict[str, Any], document_id: str,
                                               expected: str | None) -> None:
    """The most generous matching pattern wins; no match (or an unknown level) is 4403."""
    authorizer = JwtClaimsAuthorizer()
    principal = Principal("ann", claims)
    if expected is None:
        with pytest.raises(Reject) as refused:
            await authorizer.authorize(principal, document_id, UpgradeRequest("/ws/fabric"))
        assert refused.value.code == CloseCode.FORBIDDEN
    else:
        assert await authorizer.authorize(principal, document_id,
                                          UpgradeRequest("/ws/fabric")) == expected


@pytest.mark.parametrize(("origin", "allowed", "expected"), [
    ("https://app.example.com", ("https://app.example.com",), True),
    ("https://APP.example.com/", ("https://app.example.com",), True),
    ("https://a.example.com", ("https://*.example.com",), True),
    ("https://example.com.evil.net", ("https://*.example.com",), False),
    ("http://app.example.com", ("https://app.example.com",), False),
    ("https://evil.net", ("*",), True),
    ("null", ("https://app.example.com",), False),
])
def test_origin_allowlist(origin: str, allowed: tuple[str, ...], expected: bool) -> None:
    """Origins match the allowlist exactly (case and a trailing slash aside) or by pattern."""
    assert origin_allowed(origin, allowed) is expected


async def test_a_refused_origin_and_a_stopping_server_refuse_the_upgrade() -> None:
    """admit() refuses a page of another origin (1008, counted) and any upgrade while the
    server stops (1001); a client without Origin (not a browser) is admitted."""
    async with serving(allowed_origins=("https://app.example.com",)) as server:
        with pytest.raises(Reject) as refused:
            server.admit(UpgradeRequest("/ws/fabric", "", [("origin", "https://evil.net")]))
        assert refused.value.code == CloseCode.POLICY
        server.admit(UpgradeRequest("/ws/fabric", "", [("origin", "https://app.example.com")]))
        server.admit(UpgradeRequest("/ws/fabric"))
        server.stopping = True
        with pytest.raises(Reject) as stopping:
            server.admit(UpgradeRequest("/ws/fabric"))
        assert stopping.value.code == CloseCode.GOING_AWAY
        server.stopping = False


def test_client_address_behind_trusted_proxies() -> None:
    """Behind a trusted proxy the client is the last X-Forwarded-For hop that is not a
    proxy; from anyone else the header is ignored."""
    server = Server(settings_for(trusted_proxies=("10.0.0.1", "10.0.0.2")))
    forwarded = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]
    via_proxy = UpgradeRequest("/ws/fabric", "", forwarded, ("10.0.0.1", 1))
    direct = UpgradeRequest("/ws/fabric", "", forwarded, ("198.51.100.4", 1))
    assert server.client_address(via_proxy) == "203.0.113.9"
    assert server.client_address(direct) == "198.51.100.4"


async def test_unauthenticated_and_unauthorized_clients_are_closed() -> None:
    """No credentials: 4401. A document the principal may not open: 4403. Neither joins."""
    async with serving() as server:
        anonymous = _client(server, "team/a", None)
        stranger = _client(server, "elsewhere", "ann")
        await eventually(lambda: anonymous.closed_with == CloseCode.UNAUTHORIZED, "4401")
        await eventually(lambda: stranger.closed_with == CloseCode.FORBIDDEN, "4403")
        room = server.rooms.get("elsewhere")
        assert room is None or len(room) == 0


async def test_a_reader_cannot_write() -> None:
    """A read-only member's update is refused with an error naming read_only; the document
    is unchanged and a writer's edit still applies."""
    async with serving() as server:
        reader = _client(server, "public-1", "ann", "r")
        await _connected(reader)
        reader.send({"type": "update", "documentId": "public-1", "data": _update("nope")})
        await eventually(lambda: any(m["type"] == "error" and
                                     (m.get("data") or {}).get("code") == "read_only"
                                     for m in reader.texts()), "the read_only error")
        assert _text(server, "public-1") == ""
        assert reader.closed_with is None


async def test_revocation_to_read_then_none() -> None:
    """revoke(to="read") makes a writer read-only at once (its edits refused); revoke(to=
    "none") closes it with 4403 and refuses it when it comes back."""
    async with serving() as server:
        writer = _client(server, "team/a", "ann", "w")
        await _connected(writer)
        writer.send({"type": "update", "documentId": "team/a", "data": _update("one;")})
        await eventually(lambda: _text(server, "team/a") == "one;", "the first edit")
        assert await server.revoke("team/a", "ann", "read") == 1
        writer.send({"type": "update", "documentId": "team/a", "data": _update("two;")})
        await eventually(lambda: any(m["type"] == "error" for m in writer.texts()),
                         "the refusal")
        assert _text(server, "team/a") == "one;"
        assert await server.authorize(writer, "team/a") == "read"
        await server.revoke("team/a", "ann", "none")
        await eventually(lambda: writer.closed_with == CloseCode.FORBIDDEN, "4403")
        again = _client(server, "team/a", "ann", "w2")
        await eventually(lambda: again.closed_with == CloseCode.FORBIDDEN, "4403 on return")


async def test_a_revocation_survives_a_restart_and_expires() -> None:
    """A revocation is stored: a server started later on the same store still applies it,
    until revocation_ttl_s has passed."""
    store = MemoryStore()
    async with serving(store=store, revocation_ttl_s=0.5) as server:
        await server.revoke("team/a", "ann", "read")
    async with serving(store=store, revocation_ttl_s=0.5) as server:
        probe = _client(server, "team/b", "ann")
        await _connected(probe)
        assert await server.authorize(probe, "team/a") == "read"
        assert await server.authorize(probe, "team/b") == "write"
        await eventually(lambda: server._revocation("team/a", "ann") is None,
                         "the revocation to expire", timeout=5)
        assert await server.authorize(probe, "team/a") == "write"


async def test_an_authorizer_that_hangs_closes_with_4408() -> None:
    """Authorization bounded by auth_timeout_s: the connection is closed with 4408."""
    async with serving(authorizer=SlowAuthorizer(30), auth_timeout_s=0.1) as server:
        client = _client(server, "team/a", "ann")
        await eventually(lambda: client.closed_with == CloseCode.AUTH_TIMEOUT, "4408")


async def test_connections_per_user_and_per_address_are_bounded() -> None:
    """Past max_connections_per_user (any address) or max_connections_per_ip (an address
    that is not loopback) a connection is closed with 4429; a freed slot is usable again."""
    async with serving(max_connections_per_user=2, max_connections_per_ip=3) as server:
        first, second = _client(server, "team/a", "ann"), _client(server, "team/a", "ann")
        third = _client(server, "team/a", "ann")
        await eventually(lambda: third.closed_with == CloseCode.RATE_LIMITED, "4429 per user")
        await _connected(first)
        await _connected(second)
        first.leave()
        fourth = _client(server, "team/a", "ann")
        await _connected(fourth)
        remote = ("198.51.100.7", 1)
        users = [_client(server, "team/a", f"u{i}", client=remote) for i in range(4)]
        await eventually(lambda: [c.closed_with for c in users] ==
                         [None, None, None, CloseCode.RATE_LIMITED], "4429 per address")


ROUTES = [("GET", "/api/v1/documents"), ("GET", "/api/v1/documents/d1"),
          ("POST", "/api/v1/documents/d1/updates"), ("GET", "/api/v1/connections"),
          ("POST", "/api/v1/documents/d1/stateless"), ("POST", "/api/v1/publish"),
          ("GET", "/api/v1/channels/c1/history"), ("GET", "/api/v1/agent/sessions")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_the_api_key_gate_answers_before_the_route(method: str, path: str) -> None:
    """Every bearer-key route: 404 saying how to turn the API on when no key is set; 401
    with WWW-Authenticate for a missing or wrong key, whatever the route would answer."""
    for key, headers, status in [
        (None, {"authorization": "Bearer k"}, 404),
        ("k", {}, 401),
        ("k", {"authorization": "Bearer wrong"}, 401),
        ("k", {"authorization": "Basic k"}, 401),
    ]:
        app = create_app(server=Server(settings_for(api_key=key)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.request(method, path, headers=headers, content=b"{}")
        assert response.status_code == status, (key, headers, response.text)
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
        assert "CAPTIFY_WS_API_KEY" in response.json()["error"]


async def test_the_right_key_reaches_the_route() -> None:
    """With the key the route answers (the document list, here)."""
    server = Server(settings_for(api_key="k"))
    await server.start()
    try:
        await server.apply_update("d1", base64.b64decode(_update("x")))
        transport = httpx.ASGITransport(app=create_app(server=server))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/api/v1/documents",
                                      headers={"authorization": "Bearer k"})
        assert response.status_code == 200, response.text
        assert "d1" in response.text
    finally:
        await server.stop(timeout=2)
