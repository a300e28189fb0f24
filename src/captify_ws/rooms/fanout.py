"""Sending one loop turn's messages to a room's members: each member's share in one write.

A room integrates every update that arrives in one turn of the event loop in one batch
(``DocumentRoom.flush_pending``); the frames of that batch are built once, and each member gets
its share through ``Connection.send_frames`` — the same frame objects for every member, in the
order the updates were applied, one socket write per member instead of one per frame. With one
frame (the usual case at low rates) nothing waits for the end of the turn, so coalescing adds no
latency.

One frame to all members, the hot path of every broadcast, goes through the wire format's
:class:`~captify_ws.audience.Audience` instead (no Python frame per copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
