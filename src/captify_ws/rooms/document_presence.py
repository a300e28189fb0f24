"""The presence side of a :class:`~captify_ws.rooms.document.DocumentRoom`.

A room's awareness states (``presence.py`` :class:`Presence`, made on first use: a document
nobody shows presence on keeps none), what a joiner receives of them, and how their changes
reach the members (each wire format with members, cut to the message limit) and the presence
listeners (the cluster bridge). The room inherits this part, which holds the room's presence
attributes only and names what it uses of the rest of the room.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator

from captify_ws.connection import PreparedFrame
from captify_ws.metrics import Stats
from captify_ws.protocol import ywebsocket
from captify_ws.rooms import presence_wire
from captify_ws.rooms.member import Wire
from captify_ws.rooms.presence import Change, Presence
from captify_ws.rooms.wire import WireMembers

#: ``(room, changes)``: presence changed in a room (the local changes and the others)
PresenceListener = Callable[["DocumentPresence", list[Change]], None]


class DocumentPresence(ABC):
    """The awareness states of one document and their listeners (a base of ``DocumentRoom``)."""

    # of the room (DocumentRoom), used here
    document_id: str
    stats: Stats
    max_frame: int
    closed: bool
    _wires: tuple[WireMembers, ...]

    __slots__ = ("_awareness_flush_s", "_awareness_renewal_s", "_max_presence_bytes",
                 "_max_presence_states", "_presence", "presence_listeners")

    def __init__(self, *, awareness_flush_s: float, awareness_renewal_s: float,
                 max_presence_states: int, max_presence_bytes: int) -> None:
        #: the cluster bridge's listeners (added by add_presence_listener; an empty tuple
        #: until then: memory per idle document)
        self.presence_listeners: list[PresenceListener] | tuple[()] = ()
        #: made on first use (``presence``): a document nobody shows presence on keeps none
        self._presence: Presence | None = None
        self._awareness_flush_s = awareness_flush_s
        self._awareness_renewal_s = awareness_renewal_s
        self._max_presence_states = max_presence_states
        self._max_presence_bytes = max_presence_bytes

    @abstractmethod
    def __len__(self) -> int:
        """Members of the room, every wire format."""

    @abstractmethod
    def flush_pending(self) -> None:
        """Integrate and relay the room's updates waiting for the end of the loop turn."""

    @property
    def presence(self) -> Presence:
        """The awareness states of this document (made on first use; one made after the room
        closed sends nothing)."""
        if self._presence is None:
            self._presence = Presence(
                self._broadcast_presence, flush_interval=self._awareness_flush_s,
                renewal_interval=self._awareness_renewal_s,
                max_states=self._max_presence_states, max_bytes=self._max_presence_bytes,
                stats=self.stats)
            if self.closed:
                self._presence.detach()
        return self._presence

    def add_presence_listener(self, listener: PresenceListener) -> None:
        self.presence_listeners = [*self.presence_listeners, listener]

    def presence_frames_for(self, wire: Wire) -> list[PreparedFrame]:
        """The current presence of everyone, as a joiner on ``wire`` receives it."""
        if self._presence is None:
            return []
        return presence_wire.frames_for(self._presence.snapshot(), wire, self.document_id,
                                        self.max_frame)

    def awareness_groups(self, entries: Iterable[ywebsocket.AwarenessEntry]
                         ) -> Iterator[list[ywebsocket.AwarenessEntry]]:
        """Entries in groups that each fit one frame under the message limit (issue 13.7)."""
        return presence_wire.awareness_groups(entries, self.max_frame)

    def _broadcast_presence(self, changes: list[Change]) -> None:
        self.flush_pending()
        for listener in self.presence_listeners:
            listener(self, changes)
        changes = [change for change in changes if not change.silent]
        if not changes:
            return
        self.stats.broadcast("awareness", len(self), 0.0)
        for wire in self._wires:
            if wire:
                wire.send_presence(changes, self.max_frame)

    def _close_presence(self) -> None:
        """The room is unloading: presence sends nothing more and drops its reference back to
        the room (the broadcast)."""
        if self._presence is not None:
            self._presence.close()
            self._presence.detach()
        self.presence_listeners = ()
