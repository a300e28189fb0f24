"""DocumentRoom: batched integration keeps order, relays every update once, drops bad ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.protocol import hocuspocus as hp
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


class HocuspocusDocument(Member):
    """A Hocuspocus member: closing it ends one document of its socket, recorded here."""

    __slots__ = ("ended",)

    def __init__(self, connection: Connection, client_id: str) -> None:
        super().__init__(connection, client_id, "hocuspocus", address="r")
        self.ended: list[tuple[int, str]] = []

    def close(self, code: int, reason: str) -> None:
        self.ended.append((code, reason))


def _hocuspocus_member(conn: Connection, name: str) -> HocuspocusDocument:
    return HocuspocusDocument(conn, name)


async def test_a_hocuspocus_sync_answer_after_a_batch_holds_the_batch() -> None:
    """The sync answers a room keeps for Hocuspocus providers are rebuilt after a batch of
    updates, not only after a single one: a provider opening the document next gets them."""
    room = DocumentRoom("r", awareness_flush_s=0.05, awareness_renewal_s=10)
    writer, reader = Recorder(), Recorder()
    author = Member(writer, "w", "yws")
    room.join(author)
    provider = _hocuspocus_member(reader, "p")
    room.join(provider)
    first = _updates(3, "x")
    room.apply_update(first[0], Origin("member", member=author))
    await asyncio.sleep(0)
    room.hocuspocus.sync_answer(provider, b"\x00", room.state_vector(), room.encode_state)
    room.apply_update(first[1], Origin("member", member=author))
    room.apply_update(first[2], Origin("member", member=author))  # one batch of two
    await asyncio.sleep(0)
    _, step2 = room.hocuspocus.sync_answer(provider, b"\x00", room.state_vector(),
                                           room.encode_state)
    check: Doc[Any] = Doc()
    event = hp.decode(bytes(step2.payload))
    assert isinstance(event, hp.SyncStep2)
    check.apply_update(event.update)
    assert str(check.get("t", type=Text)) == "x0;x1;x2;"
    room.close()


@pytest.mark.parametrize("batch", [1, 3], ids=["one-update", "batch"])
@pytest.mark.parametrize(("wire", "told"), [
    ("yws", "closed 1007"), ("json", "error message"), ("hocuspocus", "document closed")])
async def test_each_wire_gets_each_update_as_the_same_bytes_and_a_refusal_its_way(
        wire: str, told: str, batch: int) -> None:
    """Per wire format: every member receives the very same bytes object for an update (one
    encoding per format); an update Yjs cannot integrate reaches nobody and its sender is told
    as its format tells (y-websocket: 1007, JSON: an ``error``, Hocuspocus: that document
    closed)."""
    room = DocumentRoom("r", awareness_flush_s=0.05, awareness_renewal_s=10)
    conns = [Recorder() for _ in range(3)]
    members = []
    for index, conn in enumerate(conns):
        if wire == "hocuspocus":
            member: Member = _hocuspocus_member(conn, f"m{index}")
        else:
            member = Member(conn, f"m{index}", wire)  # type: ignore[arg-type]
        room.join(member)
        members.append(member)
    # a server update (no member sender) goes to everyone, the same bytes object to each
    room.apply_update(_updates(1, "s")[0], Origin("server"))
    assert conns[0].frames[-1] is conns[1].frames[-1] is conns[2].frames[-1]
    good = _updates(batch, "g")
    # an update that decodes but cannot be integrated (a struct with no content)
    bad = _updates(1, "q")[0][:-3]
    for update in good:
        room.apply_update(update, Origin("member", member=members[0]))
    room.apply_update(bad, Origin("member", member=members[2]))
    before = [len(conn.frames) for conn in conns]
    await asyncio.sleep(0)
    received = [conn.frames[count:] for conn, count in zip(conns, before, strict=True)]
    assert len(received[1]) == batch
    assert all(x is y for x, y in zip(received[1], received[2][-batch:], strict=False))
    if told == "closed 1007":
        assert conns[2].closed_with == 1007
    elif told == "error message":
        assert any(b'"type":"error"' in frame.replace(b" ", b"") for frame in received[2])
        assert conns[2].closed_with is None
    else:
        ended = [m.ended for m in members if isinstance(m, HocuspocusDocument)]
        assert [[code for code, _ in e] for e in ended] == [[], [], [1007]]
    check: Doc[Any] = Doc()
    check.apply_update(room.encode_state())
    assert "q0;" not in str(check.get("t", type=Text))
    room.close()
