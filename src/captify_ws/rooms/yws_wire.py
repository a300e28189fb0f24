"""The y-websocket members of one room (:class:`~captify_ws.rooms.wire.WireMembers`).

Every member gets every update, its sender too: y-websocket 4 counts that echo as the server's
acknowledgement. An update that arrived as a y-websocket message is relayed as those very bytes.
A sender whose update Yjs cannot integrate is closed with the error's code (1007).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from captify_ws.connection import PreparedFrame
from captify_ws.protocol import ywebsocket
from captify_ws.rooms import fanout, presence_wire
from captify_ws.rooms.wire import MembersByConnection

if TYPE_CHECKING:
    from captify_ws.errors import InvalidMessage
    from captify_ws.rooms.member import Member
    from captify_ws.rooms.presence import Change


class YwsMembers(MembersByConnection):
    """A room's y-websocket members, one per connection."""

    __slots__ = ()

    def changed(self) -> None:
        """Nothing is kept per document here (the room caches the Step2 answer)."""

    def send_updates(self, updates: Sequence[bytes], senders: Sequence[Member | None],
                     frames: Sequence[bytes | None]) -> None:
        if len(updates) == 1:  # the usual case: one frame
            update = updates[0]
            self.audience.send(PreparedFrame.binary(
                frames[0] or ywebsocket.encode_sync_update(update), yjs_update=update))
            return
        fanout.to_all(self.by_connection, [
            PreparedFrame.binary(frame or ywebsocket.encode_sync_update(update),
                                 yjs_update=update)
            for update, frame in zip(updates, frames, strict=True)])

    def send_presence(self, changes: Sequence[Change], max_frame: int) -> None:
        """Awareness messages, owners included (y-protocols applies its own states as no-ops
        and a provider alone in a document hears its renewals)."""
        for group in presence_wire.awareness_groups((c.entry for c in changes), max_frame):
            self.audience.send(PreparedFrame.binary(ywebsocket.encode_awareness(group)))

    def refuse(self, member: Member, error: InvalidMessage) -> None:
        member.close(error.close_code, error.message)
