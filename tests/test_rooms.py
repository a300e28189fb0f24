"""DocumentRoom: batched integration keeps order, relays every update once, drops bad ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.protocol import ywebsocket
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Member, Origin

pytestmark = pytest.mark.unit


class Recorder(Connection):
    """A connection whose socket is a list: what a peer would receive, frame by frame."""

    __slots__ = ("closed_with", "frames")

    def __init__(self) -> None:
        super().__init__(UpgradeRequest("/ws/fabric/r"), None, "r",  # type: ignore[arg-type]
                         limits=ConnectionLimits())
        self.frames: list[bytes] = []
        self.closed_with: int | None = None

    def _write(self, frame: PreparedFrame) -> None:
        self.frames.append(frame.payload)

    def _transport_buffered(self) -> int:
        return 0

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        self.closed_with = code


def _updates(count: int, name: str) -> list[bytes]:
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    for index in range(count):
        text.insert(len(text), f"{name}{index};")
    return out


async def test_a_burst_is_integrated_once_and_relayed_in_order() -> None:
    """Updates arriving in one loop turn are all relayed, each once, in arrival order, and a
    malformed one among them is dropped (its sender closed) without touching the others."""
    room = DocumentRoom("r", awareness_flush_s=0.05, awareness_renewal_s=10)
    a, b, bad = Recorder(), Recorder(), Recorder()
    members = [Member(conn, name, "yws") for conn, name in ((a, "a"), (b, "b"), (bad, "x"))]
    for member in members:
        room.join(member)
    origins = [Origin("member", member=member) for member in members]
    from_a, from_b = _updates(50, "a"), _updates(50, "b")
    arrival = []
    for index in range(50):
        room.apply_update(from_a[index], origins[0])
        room.apply_update(from_b[index], origins[1])
        arrival += [from_a[index], from_b[index]]
        if index == 25:
            room.apply_update(b"\x01\x02garbage", origins[2])
    assert a.frames == []  # nothing relayed before the batch is integrated
    await asyncio.sleep(0)
    expected = [ywebsocket.encode_sync_update(update) for update in arrival]
    assert a.frames == expected
    assert b.frames == expected
    assert bad.closed_with == 1007
    text = str(room.doc.get("t", type=Text))
    assert all(f"a{i};" in text and f"b{i};" in text for i in range(50))
    room.close()


async def test_reading_the_document_integrates_what_waits() -> None:
    """A sync answer computed in the same turn already contains the waiting updates."""
    room = DocumentRoom("r", awareness_flush_s=0.05, awareness_renewal_s=10)
    member = Member(Recorder(), "a", "yws")
    room.join(member)
    update = _updates(1, "now")[0]
    room.apply_update(update, Origin("member", member=member))
    check: Doc[Any] = Doc()
    check.apply_update(room.encode_state())
    assert str(check.get("t", type=Text)) == "now0;"
    room.close()
