"""The JSON protocol's members of one room (:class:`~captify_ws.rooms.wire.WireMembers`).

A JSON message names its sender (``clientID``) and is never echoed back to it. A sender whose
update Yjs cannot integrate gets an ``error`` message and stays connected. Presence renewals
(only the clock moved) are not sent: the JSON protocol carries states, not clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from captify_ws.connection import PreparedFrame
from captify_ws.protocol import envelope
from captify_ws.rooms import fanout, presence_wire
from captify_ws.rooms.wire import MembersByConnection

if TYPE_CHECKING:
    from captify_ws.connection import Connection
    from captify_ws.errors import InvalidMessage
    from captify_ws.rooms.member import Member
    from captify_ws.rooms.presence import Change


class JsonMembers(MembersByConnection):
    """A room's JSON members, one per connection."""

    __slots__ = ("document_id",)

    def __init__(self, document_id: str) -> None:
        super().__init__()
        self.document_id = document_id

    def changed(self) -> None:
        """Nothing is kept per document here."""

    def send_updates(self, updates: Sequence[bytes], senders: Sequence[Member | None],
                     frames: Sequence[bytes | None]) -> None:
        document_id = self.document_id
        if len(updates) == 1:  # the usual case: one frame
            sender = senders[0]
            self.audience.send(PreparedFrame.text(envelope.encode_update(
                document_id, updates[0], sender.client_id if sender is not None else None)),
                self._connection_of(sender))
            return
        fanout.to_all_but_senders(self.by_connection, [
            PreparedFrame.text(envelope.encode_update(
                document_id, update, sender.client_id if sender is not None else None))
            for update, sender in zip(updates, senders, strict=True)], senders)

    def send_presence(self, changes: Sequence[Change], max_frame: int) -> None:
        told = [change for change in changes if not change.renewal]
        if told:
            frames = [PreparedFrame.text(presence_wire.json_presence(
                self.document_id, change.entry, change.state, change.json_client_id))
                for change in told]
            fanout.to_all_but_senders(self.by_connection, frames,
                                      [change.owner for change in told])

    def refuse(self, member: Member, error: InvalidMessage) -> None:
        member.connection.send_text(envelope.encode_error(self.document_id, error.message))

    def relay(self, text: str, sender: Member | None) -> int:
        """``text`` to every member except ``sender``; how many got it."""
        return self.audience.send(PreparedFrame.text(text), self._connection_of(sender))

    def _connection_of(self, member: Member | None) -> Connection | None:
        """``member``'s connection if it is a member here (only a member is skipped)."""
        if member is None:
            return None
        connection = member.connection
        return connection if self.by_connection.get(connection) is member else None

    def send_to_client(self, client_id: str, text: str) -> int:
        """``text`` to the members with this clientID; how many got it."""
        prepared = PreparedFrame.text(text)
        sent = 0
        for connection, member in self.by_connection.items():
            if member.client_id == client_id:
                connection.send_frame(prepared)
                sent += 1
        return sent
