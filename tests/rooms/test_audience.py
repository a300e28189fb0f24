"""``audience.Audience``: one frame to many connections, the transport's own write called from C
for those that take it now, and the careful path (``send_frame``) for the rest — including every
connection that changes while the broadcast runs (paused by its own write, closed by another's,
its transport gone). Each connection gets each frame exactly once, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from captify_ws.audience import Audience
from captify_ws.connection import PreparedFrame

Log = list[tuple[str, str, bytes]]


class FakeConnection:
    """What an Audience uses of a Connection, recording how each frame reached it."""

    def __init__(self, name: str, log: Log, counted: list[int], *, direct: bool = True) -> None:
        self.name = name
        self.log = log
        self.counted = counted
        self.watchers: list[Callable[[Any], None]] = []
        self.direct_write: Callable[[bytes], object] | None = self._write if direct else None
        self.on_write: Callable[[], None] | None = None

    def _write(self, data: bytes) -> None:
        self.log.append((self.name, "direct", data))
        if self.on_write is not None:
            self.on_write()

    def watch(self, watcher: Callable[[Any], None]) -> None:
        self.watchers.append(watcher)

    def unwatch(self, watcher: Callable[[Any], None]) -> None:
        self.watchers.remove(watcher)

    def send_frame(self, frame: PreparedFrame) -> None:
        self.log.append((self.name, "careful", frame.wire))

    def written_directly(self, frame: PreparedFrame) -> None:
        if self.direct_write is None:  # as Connection: only a write that filled the transport
            self.log.append((self.name, "held", frame.wire))

    def count_sent(self, frames: int, size: int) -> None:
        self.counted.append(frames)

    def set_direct(self, direct: bool) -> None:
        self.direct_write = self._write if direct else None
        for watcher in list(self.watchers):
            watcher(self)


def _audience(count: int, *, queued: tuple[int, ...] = (),
              gone: tuple[int, ...] = ()
              ) -> tuple[Audience, list[FakeConnection], Log, list[int]]:
    log: Log = []
    counted: list[int] = []
    connections = [FakeConnection(f"c{i}", log, counted, direct=i not in queued)
                   for i in range(count)]
    for index in gone:
        connections[index].direct_write = _gone
    audience = Audience()
    for connection in connections:
        audience.add(connection)  # type: ignore[arg-type]
    return audience, connections, log, counted


def _gone(data: bytes) -> None:
    raise RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed")


def _frames(count: int) -> list[PreparedFrame]:
    return [PreparedFrame.binary(bytes([i]) * (i + 1)) for i in range(count)]


def _received(log: Log, name: str) -> list[bytes]:
    """What ``name`` was given, whichever way (a frame held after its write is not a second
    copy: ``held`` only accounts for it)."""
    return [data for who, how, data in log if who == name and how != "held"]


def test_every_connection_gets_every_frame_once_in_order() -> None:
    audience, connections, log, counted = _audience(6, queued=(2, 5))
    frames = _frames(3)
    for frame in frames:
        assert audience.send(frame) == 6
    for connection in connections:
        assert _received(log, connection.name) == [frame.wire for frame in frames]
    assert {how for who, how, _ in log if who in ("c2", "c5")} == {"careful"}
    assert {how for who, how, _ in log if who not in ("c2", "c5")} == {"direct"}
    assert counted == [4, 4, 4]  # only the direct writes are counted here


@pytest.mark.parametrize("skip", [0, 3, 5])
def test_the_skipped_connection_gets_nothing(skip: int) -> None:
    audience, connections, log, _ = _audience(6, queued=(5,))
    frame = _frames(1)[0]
    assert audience.send(frame, skip=connections[skip]) == 5  # type: ignore[arg-type]
    for index, connection in enumerate(connections):
        assert _received(log, connection.name) == ([] if index == skip else [frame.wire])
    audience.send(frame)  # the skipped connection is still a member, and still direct
    assert _received(log, connections[skip].name) == [frame.wire]


@pytest.mark.parametrize("filled", [0, 2, 4])
def test_a_connection_paused_by_its_own_write(filled: int) -> None:
    """The write that fills a transport: the frame is held (accounted) for that connection,
    the others still get it once, and the next frames wait in its queue (careful path)."""
    audience, connections, log, _ = _audience(5)
    paused = connections[filled]
    paused.on_write = lambda: (setattr(paused, "on_write", None), paused.set_direct(False))
    first, second = _frames(2)
    audience.send(first)
    assert (paused.name, "held", first.wire) in log
    for connection in connections:
        assert _received(log, connection.name) == [first.wire], connection.name
    audience.send(second)
    assert (paused.name, "careful", second.wire) in log
    assert [how for who, how, _ in log if who == paused.name] == ["direct", "held", "careful"]


def test_a_connection_closed_by_another_write_gets_no_direct_write() -> None:
    """A write that closes a later connection (the server-wide outbound budget closes the
    slowest): that connection is not written to directly after its close."""
    audience, connections, log, _ = _audience(5)
    closed = connections[3]
    connections[1].on_write = lambda: closed.set_direct(False)
    frame = _frames(1)[0]
    audience.send(frame)
    assert [how for who, how, _ in log if who == "c3"] == ["careful"]
    for connection in connections:
        assert _received(log, connection.name) == [frame.wire]


def test_a_transport_gone_under_the_broadcast() -> None:
    """A write that raises (the transport closed under the broadcast): that connection and the
    rest go the careful way (which checks each), the earlier ones were written once."""
    audience, _, log, counted = _audience(5, gone=(2,))
    frame = _frames(1)[0]
    audience.send(frame)
    assert [(who, how) for who, how, _ in log] == [
        ("c0", "direct"), ("c1", "direct"),
        ("c2", "careful"), ("c3", "careful"), ("c4", "careful")]
    assert counted == [2]


def test_a_broadcast_started_while_one_runs() -> None:
    """A change during a broadcast that makes the same audience broadcast again (the server
    does not do this synchronously today): each broadcast still reaches every member once."""
    audience, connections, log, _ = _audience(4)
    outer, inner = _frames(2)

    def leave() -> None:
        connections[1].on_write = None
        connections[3].set_direct(False)
        audience.send(inner)

    connections[1].on_write = leave
    audience.send(outer)
    for connection in connections:
        assert sorted(_received(log, connection.name)) == sorted([outer.wire, inner.wire])


def test_leaving_and_moving_members() -> None:
    audience, connections, log, _ = _audience(4)
    audience.discard(connections[0])  # type: ignore[arg-type]
    connections[1].set_direct(False)
    connections[1].set_direct(True)
    connections[2].set_direct(False)
    assert len(audience) == 3
    frame = _frames(1)[0]
    assert audience.send(frame) == 3
    assert [(who, how) for who, how, _ in log] == [
        ("c3", "direct"), ("c1", "direct"), ("c2", "careful")]
    assert connections[0].watchers == []
