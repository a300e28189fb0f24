"""Sending one loop turn's messages to a room's members: each member's share in one write.

A room integrates every update that arrives in one turn of the event loop in one batch
(``DocumentRoom.flush_pending``); the frames of that batch are built once, and each member gets
its share through ``Connection.send_frames`` — the same frame objects for every member, in the
order the updates were applied, one socket write per member instead of one per frame. With one
frame (the usual case at low rates) nothing waits for the end of the turn, so coalescing adds no
latency.

One frame to many members is the hot path of every broadcast, once per copy: an
:class:`Audience` keeps, for the members whose transport takes a frame now
(``Connection.direct_write``), the transport's own write, and calls them all from C
(``map(operator.call, …)``) — no Python frame, no attribute lookups per copy. Any change to a
member during the broadcast (a write that fills its transport, a close) stops the fast path:
the rest of the members get the frame through ``Connection.send_frame``, which checks each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import call
from typing import TYPE_CHECKING, TypeVar

from captify_ws.connection import Connection, PreparedFrame
from captify_ws.frames import FrameBatch

if TYPE_CHECKING:
    from captify_ws.rooms.member import Member

M = TypeVar("M")


def to_all(connections: Iterable[Connection], frames: Sequence[PreparedFrame]) -> None:
    """``frames``, in order, to every connection (each connection: one write)."""
    if len(frames) == 1:
        frame = frames[0]
        for connection in connections:
            connection.send_frame(frame)
        return
    batch = FrameBatch(frames)
    for connection in connections:
        connection.send_frames(batch)


def to_all_but_senders(members: Mapping[Connection, M], frames: Sequence[PreparedFrame],
                       senders: Sequence[M | None]) -> None:
    """``frames[i]`` to every member except ``senders[i]`` (the member whose message it relays,
    or ``None``), in order, one write per member; a member that sent some of them gets the
    others, and its list is built for it alone."""
    sending = {sender for sender in senders if sender is not None}
    if not sending:
        to_all(members, frames)
        return
    frames = FrameBatch(frames)
    for connection, member in members.items():
        if member in sending:
            own = [frame for frame, sender in zip(frames, senders, strict=True)
                   if sender is not member]
            if own:
                connection.send_frames(own)
        else:
            connection.send_frames(frames)


def acknowledged(members: Iterable[Member], frames: Sequence[PreparedFrame],
                 senders: Sequence[Member | None], ack: PreparedFrame) -> None:
    """``frames`` to every member in order, where a member receives ``ack`` instead of the
    frames it sent itself (Hocuspocus answers an applied update with ``SyncStatus``)."""
    sending = {sender for sender in senders if sender is not None}
    for member in members:
        if member in sending:
            member.connection.send_frames([ack if sender is member else frame
                                           for frame, sender in zip(frames, senders,
                                                                    strict=True)])
        else:
            member.connection.send_frames(frames)


class Audience:
    """The connections of one room's wire format, ready for a broadcast (see the module
    docstring): those a frame may be written to directly, with their transport's write, and
    the others (paused, closing, or a transport with a writer task of its own)."""

    __slots__ = ("_direct", "_left", "_others", "_rest")

    def __init__(self) -> None:
        self._direct: dict[Connection, Callable[[bytes], object]] = {}
        self._others: dict[Connection, None] = {}
        #: the running broadcast's writes still to make, and how many there were when a
        #: member changed (the iterator is emptied then, which stops the broadcast)
        self._rest: Iterator[Callable[[bytes], object]] | None = None
        self._left: int | None = None

    def __len__(self) -> int:
        return len(self._direct) + len(self._others)

    def add(self, connection: Connection) -> None:
        connection.watch(self._moved)
        self._moved(connection)

    def discard(self, connection: Connection) -> None:
        connection.unwatch(self._moved)
        self._direct.pop(connection, None)
        self._others.pop(connection, None)

    def _moved(self, connection: Connection) -> None:
        write = connection.direct_write
        if write is None:
            self._direct.pop(connection, None)
            self._others[connection] = None
        else:
            self._others.pop(connection, None)
            self._direct[connection] = write
        if self._rest is not None and self._left is None:
            self._left = len(tuple(self._rest))  # the broadcast stops after this write

    def send(self, frame: PreparedFrame, skip: Connection | None = None) -> int:
        """``frame`` to every connection but ``skip``; how many it was sent to."""
        direct = self._direct
        if skip is not None and skip in direct:
            skipped = direct.pop(skip)
            connections, writes = tuple(direct), tuple(direct.values())
            direct[skip] = skipped
        else:
            connections, writes = tuple(direct), tuple(direct.values())
        others = tuple(self._others)  # before the writes: a member paused by one moves there
        done = len(writes)
        if writes:
            saved = self._rest, self._left
            rest = self._rest = iter(writes)
            self._left = None
            try:
                deque(map(call, rest, repeat(frame.wire)), 0)
            except RuntimeError:  # a transport closed under the broadcast: it goes the careful way
                if self._left is None:
                    self._left = len(tuple(rest)) + 1
            left = self._left
            self._rest, self._left = saved
            if left is not None:  # stopped: the rest go the careful way, which checks each
                done -= left
                for connection in connections[:done]:
                    connection.written_directly(frame)
            connections[0].count_sent(done, len(frame.payload))
            for connection in connections[done:]:
                connection.send_frame(frame)
        sent = len(connections)
        for connection in others:
            if connection is not skip:
                connection.send_frame(frame)
                sent += 1
        return sent
