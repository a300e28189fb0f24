"""Closing: a message received before the peer's close is handled, never silently dropped
(issue 13, item 5); a peer that never answers the server's close frame is aborted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import pytest
from pycrdt import Doc, Text

from tests.attacks import client_frame, close_payload, sync_message
from tests.helpers import running_server
from tests.polling import eventually

TRIES = 20


def _update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


def _text_of(update: bytes | None) -> str:
    if update is None:
        return ""
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return str(doc.get("text", type=Text))


async def _one_write(port: int, target: str, frames: bytes) -> bytes:
    """Upgrade, then send ``frames`` in one write; answer what the server sent back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                 "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(frames)
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            received += chunk
    writer.close()
    return received


@pytest.mark.parametrize("auth", ["none", "tests.outside.auth_hooks:delayed_authenticate"])
@pytest.mark.parametrize("wire", ["yws", "json"])
async def test_update_written_with_the_close_is_stored(transport: str, wire: str,
                                                       auth: str) -> None:
    """One write holding an update and a close frame: the update is applied and stored, 20
    times out of 20 (the answer to the close arrives too)."""
    async with running_server(transport, auth=auth) as srv:
        for index in range(TRIES):
            document = f"last-words-{index}"
            update = _update(f"kept {index}")
            if wire == "yws":
                target = f"/ws/fabric/{document}"
                message = client_frame(0x2, sync_message(2, update))
            else:
                target = f"/ws/fabric?documentId={document}"
                message = client_frame(0x1, json.dumps({
                    "type": "update", "documentId": document,
                    "data": base64.b64encode(update).decode()}).encode())
            answer = await _one_write(srv.port, target, message
                                      + client_frame(0x8, close_payload(1000)))
            assert b"\x88\x02\x03\xe8" in answer  # the server's close frame, 1000
            async def kept(document: str = document, index: int = index) -> bool:
                return _text_of(await srv.server.get_document(document)) == f"kept {index}"

            await eventually(kept, f"try {index}: the update to be applied", timeout=5)
            await srv.server.writer.flush()
            stored = await srv.server.store.load(document)
            assert stored is not None and _text_of(stored.as_update()) == f"kept {index}"


async def test_peer_that_never_answers_the_close_is_aborted(transport: str) -> None:
    """After the server's close frame (4429 here), a peer that neither answers nor reads is
    dropped within close_timeout_s, and its connection is released."""
    async with running_server(transport, message_rate=1, message_burst=1,
                              close_timeout_s=0.5) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /ws/fabric/mute HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(client_frame(0x2, b"\x03") * 3)  # query-awareness × 3: rate limited
        await eventually(lambda: srv.server.get_connection_count() == 0,
                         "the silent peer to be dropped", timeout=5)
        received = await asyncio.wait_for(reader.read(), 5)
        assert b"\x88" in received and (4429).to_bytes(2, "big") in received
        writer.close()
