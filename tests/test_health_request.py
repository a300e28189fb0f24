"""Which request heads the native transport answers itself for /healthz
(``transport/health.py``): a plain GET or HEAD only; everything else goes to the app."""

from __future__ import annotations

import pytest

from captify_ws.transport.health import BODY, health_request, health_response

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("head", "expected"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x", (False, True)),
    (b"HEAD /healthz?probe=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: lb/1.0", (True, True)),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close", (False, False)),
    (b"GET /healthz HTTP/1.0", (False, False)),
    (b"GET /healthz HTTP/1.1\r\nContent-Length: 0", (False, True)),
])
def test_plain_health_requests_are_answered_here(head: bytes,
                                                 expected: tuple[bool, bool]) -> None:
    """``(is_head, keep_alive)`` for a plain GET/HEAD of /healthz."""
    assert health_request(head) == expected


@pytest.mark.parametrize("head", [
    b"POST /healthz HTTP/1.1\r\nHost: x",
    b"GET /healthz/ HTTP/1.1\r\nHost: x",
    b"GET /readyz HTTP/1.1\r\nHost: x",
    b"GET http://x/healthz HTTP/1.1\r\nHost: x",
    b"GET /healthz HTTP/2.0\r\nHost: x",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 2",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked",
    b"GET /healthz HTTP/1.1\r\n folded: line",
    b"GET /healthz HTTP/1.1\r\nNo colon here",
    b"GET /healthz HTTP/1.1\r\nX: a\x00b",
])
def test_anything_else_goes_to_the_app(head: bytes) -> None:
    """Another method, path, version, a body or a malformed line: ``None``."""
    assert health_request(head) is None


def test_the_answer_has_the_apps_headers_and_body() -> None:
    """200 with the JSON body and the instance; HEAD without the body; close when asked."""
    answer = health_response("abc123", is_head=False, keep_alive=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
    assert b"\r\ncontent-type: application/json" in head
    assert b"\r\nx-captify-instance: abc123" in head
    assert b"connection: close" not in head
    assert health_response("abc123", is_head=True, keep_alive=False).endswith(
        b"connection: close\r\n\r\n")
