"""``GET /healthz`` answered where the native transport reads a connection's first request head.

A health probe (a load balancer's: a new connection per probe) is answered in the read callback
that completes its head, with the same status, body and headers as the app's ``/healthz``
route, instead of one loop turn later in a task running the ASGI app: under load every loop turn
is a round over every busy socket, so a probe that needs fewer turns is answered sooner (issue 13:
``/healthz`` under 50 ms throughout). Only a plain request is answered here (``GET`` or ``HEAD``,
HTTP/1.0 or 1.1, well-formed header lines, no body); anything else goes to the app as before,
and so does every later request of a kept-alive connection.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from typing import Final

#: The app's route (``CaptifyApp._healthz``) and its body.
HEALTH_PATH: Final = "/healthz"
BODY: Final = b'{"status":"ok"}'

_REQUEST_LINE: Final = re.compile(rb"(GET|HEAD) ([^ ?#]+)(?:\?[^ #]*)? HTTP/1\.([01])")
#: A header line: a token (RFC 9110 §5.6.2), a colon, a value without control characters.
_HEADER_LINE: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
                                 rb"([^\x00-\x08\x0a-\x1f\x7f]*)")


def health_request(head: bytes) -> tuple[bool, bool] | None:
    """``(is_head, keep_alive)`` if ``head`` (a request head without its final CRLF CRLF) is a
    plain ``GET``/``HEAD`` of :data:`HEALTH_PATH` answerable here; ``None`` for anything else
    (another path, a body, a malformed or unusual line: the app answers those). Only an
    HTTP/1.1 request without ``Connection: close`` is kept alive."""
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None or match.group(2).decode("latin-1") != HEALTH_PATH:
        return None
    keep_alive = match.group(3) == b"1"
    for line in lines[1:]:
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            return None
        name = header.group(1).lower()
        value = header.group(2).strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None
        if name == b"connection" and b"close" in {token.strip() for token in value.split(b",")}:
            keep_alive = False
    return match.group(1) == b"HEAD", keep_alive


def health_response(instance_id: str, is_head: bool, keep_alive: bool) -> bytes:
    """The whole answer: 200, :data:`BODY` as JSON (its headers, without it for ``HEAD``),
    ``X-Captify-Instance``, ``Date`` (RFC 9110 §6.6.1) and ``Connection: close`` when the
    connection ends with it."""
    head = (b"HTTP/1.1 200 OK\r\ndate: " + formatdate(usegmt=True).encode()
            + b"\r\ncontent-length: " + str(len(BODY)).encode()
            + b"\r\ncontent-type: application/json\r\nx-captify-instance: "
            + instance_id.encode("latin-1", "replace") + b"\r\n"
            + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n")
    return head if is_head else head + BODY
