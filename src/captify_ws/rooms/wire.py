"""What a room asks of the members of one wire format: :class:`WireMembers`.

A :class:`~captify_ws.rooms.document.DocumentRoom` speaks no wire format. Its members are kept
in one :class:`WireMembers` per format — y-websocket (``rooms/yws_wire.py``), the JSON protocol
(``rooms/json_wire.py``), Hocuspocus framing (``rooms/hocuspocus.py``) — and the room's one
broadcast loop hands each change to every format that has members. Each format encodes the
change once (once per address for Hocuspocus) and writes the same
:class:`~captify_ws.frames.PreparedFrame` to every member of that format.

The policy is the room's: what is relayed (only what Yjs integrated, in the order applied),
that each update travels with its origin's member so no format echoes it where it came from,
and that an update Yjs cannot integrate is never relayed and its sender is told. A format says
only how its members hear it: its acknowledgement convention for the sender (y-websocket 4
counts the echo of its own update as one, a JSON sender gets nothing back, a Hocuspocus sender
gets ``SyncStatus``) and how a refused sender is told (:meth:`WireMembers.refuse`).

What broadcast does not guarantee: delivery (see ``connection.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from captify_ws.audience import Audience

if TYPE_CHECKING:
    from captify_ws.connection import Connection
    from captify_ws.errors import InvalidMessage
    from captify_ws.rooms.member import Member
    from captify_ws.rooms.presence import Change


class WireMembers(Protocol):
    """One room's members of one wire format, and how that format carries a change."""

    def __len__(self) -> int:
        """Members of this format (a Hocuspocus socket counts once per document)."""

    def __iter__(self) -> Iterator[Member]:
        """Every member (a copy: members may leave while the caller iterates)."""

    def join(self, member: Member) -> None:
        """Add ``member`` (its ``wire`` names this format)."""

    def leave(self, member: Member) -> bool:
        """Remove ``member``; whether it was one."""

    def changed(self) -> None:
        """The document changed: answers built for it before are stale."""

    def send_updates(self, updates: Sequence[bytes], senders: Sequence[Member | None],
                     frames: Sequence[bytes | None]) -> None:
        """Updates applied in this order, each from ``senders[i]`` (``None``: not a member
        here), ``frames[i]`` the y-websocket message it arrived in (relayed as it is) or
        ``None``. Each member gets its share in one write."""

    def send_presence(self, changes: Sequence[Change], max_frame: int) -> None:
        """Presence changes (none silent), in frames of at most ``max_frame`` bytes."""

    def refuse(self, member: Member, error: InvalidMessage) -> None:
        """``member`` sent an update Yjs cannot integrate: tell it as this format does."""


class MembersByConnection:
    """Members kept one per connection: the membership part of :class:`WireMembers` that the
    y-websocket and JSON formats share (a Hocuspocus socket may hold several documents)."""

    __slots__ = ("audience", "by_connection")

    def __init__(self) -> None:
        self.by_connection: dict[Connection, Member] = {}
        #: the same connections, ready for a broadcast of one frame (``audience.py``)
        self.audience = Audience()

    def __len__(self) -> int:
        return len(self.by_connection)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self.by_connection.values()))

    def join(self, member: Member) -> None:
        if member.connection not in self.by_connection:
            self.audience.add(member.connection)
        self.by_connection[member.connection] = member

    def leave(self, member: Member) -> bool:
        if self.by_connection.pop(member.connection, None) is None:
            return False
        self.audience.discard(member.connection)
        return True
