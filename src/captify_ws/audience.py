"""One frame to many connections, the hot path of every broadcast: :class:`Audience`.

A broadcast writes one :class:`~captify_ws.frames.PreparedFrame` to every member of a room's
wire format (or every subscriber of a channel), once per copy. An :class:`Audience` keeps, for
the connections whose transport takes a frame now (``Connection.direct_write``,
``direct_writes.py``), the transport's own write, and calls them all from C
(``map(operator.call, …)``): no Python frame and no attribute lookup per copy, the same
``bytes`` object for every socket. Any change to one of them during the broadcast (a write that
fills its transport, a close) stops the fast path: the rest get the frame through
``Connection.send_frame``, which checks each. Each connection gets each frame once, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import chain, repeat
from operator import call

from captify_ws.connection import Connection, PreparedFrame


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

    def __contains__(self, connection: object) -> bool:
        return connection in self._direct or connection in self._others

    def __iter__(self) -> Iterator[Connection]:
        """Every connection (a copy: connections may leave while the caller iterates)."""
        return iter(tuple(chain(self._direct, self._others)))

    def add(self, connection: Connection) -> None:
        """Add ``connection`` (nothing if it is here already)."""
        if connection not in self:
            connection.watch(self._moved)
            self._moved(connection)

    def discard(self, connection: Connection) -> None:
        """Remove ``connection`` (nothing if it is not here)."""
        if connection in self:
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
        skipped = direct.pop(skip, None) if skip is not None else None
        connections, writes = tuple(direct), tuple(direct.values())
        if skip is not None and skipped is not None:
            direct[skip] = skipped
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
