"""RFC 6455 conformance, table-driven in the spirit of the Autobahn suite (issue 13, item 11).

Autobahn's fuzzingclient needs Python 2 (``autobahntestsuite``), which this machine does not
have; these tables send the same kinds of frames from a raw socket and check the server's
answer on both transports: the close code it sends (and that it never echoes a code a peer may
not send), pongs, fragmented messages, and the opening handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from pycrdt import Doc, Text

from captify_ws.protocol import ywebsocket
from tests.attacks import client_frame, close_payload, sync_message
from tests.helpers import json_client, running_server

UPGRADE = ("GET /ws/fabric/rfc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
           "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{version}{extra}\r\n")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame: ``(opcode, payload)``; server frames are never masked."""
    first, second = await reader.readexactly(2)
    assert not second & 0x80, "a server frame is masked"
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(length)


async def _session(port: int, frames: list[bytes], *, answer_close: bool = True,
                   version: str = "13", extra: str = "") -> tuple[bytes, list[tuple[int, bytes]]]:
    """Upgrade, send ``frames``, read the server's frames up to its close frame (answering
    it), and the end of the TCP connection. Answers (response head, frames)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        version_header = f"Sec-WebSocket-Version: {version}\r\n" if version else ""
        writer.write(UPGRADE.format(version=version_header, extra=extra).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if not head.startswith(b"HTTP/1.1 101"):
            return head, []
        for frame in frames:
            writer.write(frame)
        received: list[tuple[int, bytes]] = []
        while True:
            opcode, payload = await asyncio.wait_for(_read_frame(reader), 5)
            received.append((opcode, payload))
            if opcode == 0x8:
                break
        if answer_close:
            with contextlib.suppress(ConnectionError):
                writer.write(client_frame(0x8, payload[:2]))
        # the server closes the TCP connection after the closing handshake
        assert await asyncio.wait_for(reader.read(), 5) == b""
        return head, received
    finally:
        writer.close()


def _close_code(received: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in received:
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


TEXT = b'{"type":"sync","documentId":"rfc"}'

#: (frames the client sends, the close code the server must answer with)
VIOLATIONS = [
    pytest.param([client_frame(0x2, b"\x03", rsv=4)], 1002, id="rsv1-without-extension"),
    pytest.param([client_frame(0x2, b"\x03", rsv=2)], 1002, id="rsv2"),
    pytest.param([client_frame(0x2, b"\x03", rsv=1)], 1002, id="rsv3"),
    pytest.param([client_frame(0x9, b"", rsv=4)], 1002, id="rsv1-on-ping"),
    pytest.param([client_frame(0x3, b"x")], 1002, id="reserved-opcode-3"),
    pytest.param([client_frame(0x7, b"x")], 1002, id="reserved-opcode-7"),
    pytest.param([client_frame(0xB, b"x")], 1002, id="reserved-control-opcode-b"),
    pytest.param([client_frame(0x9, b"p" * 126)], 1002, id="ping-over-125-bytes"),
    pytest.param([client_frame(0x9, b"p", fin=False)], 1002, id="fragmented-ping"),
    pytest.param([client_frame(0x8, close_payload(1000, b"r" * 124))], 1002,
                 id="close-over-125-bytes"),
    pytest.param([client_frame(0x2, b"\x03", masked=False)], 1002, id="unmasked-frame"),
    pytest.param([client_frame(0x0, b"\x03")], 1002, id="continuation-without-message"),
    pytest.param([client_frame(0x2, b"\x00", fin=False), client_frame(0x2, b"\x00")], 1002,
                 id="new-message-inside-fragmented-one"),
    pytest.param([client_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")],
                 1007, id="invalid-utf8-surrogate"),
    pytest.param([client_frame(0x1, b"\xff\xfe")], 1007, id="invalid-utf8-bytes"),
    pytest.param([client_frame(0x1, b"\xce\xba\xe1", fin=False), client_frame(0x0, b"\xff",)],
                 1007, id="invalid-utf8-across-fragments"),
    pytest.param([client_frame(0x1, b"ok \xf4\x90\x80\x80", fin=False)], 1007,
                 id="invalid-utf8-fails-fast-in-first-fragment"),
    pytest.param([client_frame(0x8, b"\x03")], 1002, id="close-with-one-byte"),
    pytest.param([client_frame(0x8, close_payload(1000, b"\xff"))], 1007,
                 id="close-reason-invalid-utf8"),
    *[pytest.param([client_frame(0x8, close_payload(code))], 1002, id=f"close-code-{code}")
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)],
]


@pytest.mark.parametrize(("frames", "expected"), VIOLATIONS)
async def test_violation_gets_its_close_code(transport: str, frames: list[bytes],
                                             expected: int) -> None:
    """Each violation is answered with its close code (never an echo of an invalid one), and
    the TCP connection is closed."""
    async with running_server(transport) as srv:
        _, received = await _session(srv.port, frames)
        assert _close_code(received) == expected, received


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 3999, 4000, 4999])
async def test_valid_close_code_is_echoed(transport: str, code: int) -> None:
    """RFC 6455 §5.5.1: a close with a code a peer may send is answered with that code."""
    async with running_server(transport) as srv:
        _, received = await _session(srv.port, [client_frame(0x8, close_payload(code, b"bye"))])
        assert _close_code(received) == code


async def test_close_without_code_is_answered_1000(transport: str) -> None:
    """A close frame with no payload is answered (1005 may not be sent: 1000 or empty)."""
    async with running_server(transport) as srv:
        _, received = await _session(srv.port, [client_frame(0x8, b"")])
        assert _close_code(received) in (1000, 1005)
        assert received[-1][1] != struct.pack("!H", 1005)


async def test_ping_is_answered_with_its_payload(transport: str) -> None:
    """A ping (inside a fragmented message too) gets a pong with the same payload, and the
    fragmented message is delivered whole."""
    async with running_server(transport) as srv:
        step1 = sync_message(0, b"\x00")
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(UPGRADE.format(version="Sec-WebSocket-Version: 13\r\n", extra="").encode())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(client_frame(0x9, b"hello") + client_frame(0x2, step1[:1], fin=False)
                     + client_frame(0x9, b"again") + client_frame(0x0, step1[1:2], fin=False)
                     + client_frame(0x0, step1[2:]))
        pongs: list[bytes] = []
        while True:
            opcode, payload = await asyncio.wait_for(_read_frame(reader), 5)
            if opcode == 0xA:
                pongs.append(payload)
            if opcode == 0x2 and payload[:2] == b"\x00\x01":  # sync step 2: the answer
                break
        # every ping is answered, or only the most recent of those that arrived together
        # (RFC 6455 §5.5.3)
        assert pongs and pongs[-1] == b"again" and set(pongs) <= {b"hello", b"again"}
        writer.close()


async def test_fragmented_text_message_is_delivered(transport: str) -> None:
    """A UTF-8 text message split inside a multi-byte character arrives whole."""
    async with running_server(transport) as srv:
        text = '{"type":"sync","documentId":"rfc","data":{"note":"κόσμε"}}'.encode()
        cut = text.index("κ".encode()) + 1
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(UPGRADE.format(version="Sec-WebSocket-Version: 13\r\n", extra="")
                     .replace("/ws/fabric/rfc", "/ws/fabric?documentId=rfc").encode())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(client_frame(0x1, text[:cut], fin=False) + client_frame(0x0, text[cut:]))
        kinds = []
        while b'"synced"' not in b"".join(kinds):
            opcode, payload = await asyncio.wait_for(_read_frame(reader), 5)
            assert opcode == 0x1
            kinds.append(payload)
        writer.close()


async def test_too_many_fragments_closes_1009(transport: str) -> None:
    """A message in more than max_message_frames frames: 1009."""
    async with running_server(transport, max_message_frames=10) as srv:
        frames = [client_frame(0x2, b"\x00", fin=False)] + \
            [client_frame(0x0, b"", fin=False)] * 20
        _, received = await _session(srv.port, frames)
        assert _close_code(received) == 1009


async def test_message_too_big_changes_nothing_and_its_close_arrives(transport: str) -> None:
    """A message over max_message_size (the native transport refuses it from its frame header)
    is not applied, and a client still sending after it reads the 1009 close frame and then the
    end of the stream, never a reset (RFC 6455 §7.1.1)."""
    doc: Doc = Doc()
    doc.get("text", type=Text).insert(0, "x" * 8000)
    frames = [client_frame(0x2, ywebsocket.encode_sync_update(doc.get_update()))] + \
        [client_frame(0x2, ywebsocket.encode_query_awareness())] * 200
    async with running_server(transport, max_message_size=4096) as srv:
        _, received = await _session(srv.port, frames, answer_close=False)
        assert _close_code(received) == 1009
        async with json_client(srv, "rfc", "check") as check:
            await check.sync()
            assert str(check.text) == ""


@pytest.mark.parametrize("version", ["8", "7", "12", "14", ""])
async def test_other_websocket_versions_get_426(transport: str, version: str) -> None:
    """RFC 6455 §4.2.2: another (or no) Sec-WebSocket-Version is refused with 426 Upgrade
    Required (or 400 when missing) naming version 13; never a 101."""
    async with running_server(transport) as srv:
        head, _ = await _session(srv.port, [], version=version)
        status = int(head.split(b" ")[1])
        if version:
            assert status == 426, head
            assert b"sec-websocket-version: 13" in head.lower(), head
        else:
            assert status in (400, 426), head


async def test_non_ascii_origin_is_refused_403(transport: str) -> None:
    """An Origin outside the allowlist with non-ASCII bytes gets 403, not 500."""
    async with running_server(transport, allowed_origins=("https://app.example.com",)) as srv:
        head, _ = await _session(srv.port, [], extra="Origin: https://\u00e9vil.example\r\n")
        assert head.startswith(b"HTTP/1.1 403"), head
