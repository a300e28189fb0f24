"""The Hocuspocus members of one room, grouped by the address their frames carry
(:class:`~captify_ws.rooms.wire.WireMembers`).

Every Hocuspocus frame starts with its document's address. Providers use the document name
(the same for all of them), so a broadcast is encoded once per address — in practice once — and
the same bytes go to every member of that address. Only v4 providers that opt into
``sessionAwareness`` have an address of their own (``name\\0sessionId``), and cost one encoding
each.

Sync answers are reused the same way: the answer to a Step1 (the server's Step1, then Step2)
is built once per address and state vector and kept until the document changes, so a
thousand providers opening one document cost one encoding, and each gets the same bytes.

What broadcast does not guarantee: delivery (see ``connection.py``); an update's sender gets the
``SyncStatus`` acknowledgement instead of its own update back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from captify_ws.connection import PreparedFrame
from captify_ws.errors import InvalidMessage
from captify_ws.protocol.hocuspocus import FrameEncoder
from captify_ws.protocol.statevector import EMPTY as EMPTY_STATE_VECTOR
from captify_ws.protocol.ywebsocket import _StrictDecoder
from captify_ws.rooms import fanout, presence_wire

if TYPE_CHECKING:
    from captify_ws.rooms.member import Member
    from captify_ws.rooms.presence import Change


#: Sync answers kept per address until the document changes (distinct state vectors; a
#: fresh provider's is the empty one, so one entry serves most).
SYNC_ANSWERS_MAX: Final = 8

#: The document's state as Yjs bytes: everything (``None``) or what a state vector lacks.
EncodeState = Callable[[bytes | None], bytes]


class _Address:
    """The members that share one address, its encoder, its acknowledgement frame and the
    sync answers built for it since the document last changed."""

    __slots__ = ("ack", "answers", "encoder", "members", "step1")

    def __init__(self, address: str) -> None:
        self.encoder = FrameEncoder(address)
        self.members: dict[Member, None] = {}
        self.ack = PreparedFrame.binary(self.encoder.sync_status(True))
        self.step1: PreparedFrame | None = None
        self.answers: dict[bytes, PreparedFrame] = {}


class HocuspocusMembers:
    """A room's Hocuspocus members. See the module docstring."""

    __slots__ = ("_by_address", "_count")

    def __init__(self) -> None:
        self._by_address: dict[str, _Address] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Member]:
        for group in list(self._by_address.values()):
            yield from list(group.members)

    def join(self, member: Member) -> None:
        address = member.address or ""
        group = self._by_address.get(address)
        if group is None:
            group = self._by_address[address] = _Address(address)
        if member not in group.members:
            group.members[member] = None
            self._count += 1

    def leave(self, member: Member) -> bool:
        group = self._by_address.get(member.address or "")
        if group is None or member not in group.members:
            return False
        del group.members[member]
        self._count -= 1
        if not group.members:
            del self._by_address[group.encoder.address]
        return True

    def changed(self) -> None:
        """The document changed: sync answers built before are stale."""
        for group in self._by_address.values():
            group.step1 = None
            group.answers.clear()

    def sync_answer(self, member: Member, state_vector: bytes, own_vector: bytes,
                    encode_state: EncodeState) -> tuple[PreparedFrame, PreparedFrame]:
        """The answer to ``member``'s Step1: the server's Step1 (``own_vector``, the document's
        state vector) and Step2 (what ``state_vector`` lacks, from ``encode_state``).

        ``state_vector`` should hold only clients the document knows
        (:func:`captify_ws.protocol.statevector.relevant_entries`): a fresh provider's is then
        empty, and every fresh provider of an address gets the same frames until the
        document changes (:meth:`changed`). Raises ``KeyError`` for a non-member."""
        group = self._by_address[member.address or ""]
        step1 = group.step1
        if step1 is None:
            step1 = group.step1 = PreparedFrame.binary(group.encoder.sync_step1(own_vector))
        step2 = group.answers.get(state_vector)
        if step2 is None:
            step2 = PreparedFrame.binary(group.encoder.sync_step2(
                encode_state(None if state_vector == EMPTY_STATE_VECTOR else state_vector)))
            if len(group.answers) < SYNC_ANSWERS_MAX:
                group.answers[state_vector] = step2
        return step1, step2

    def send_updates(self, updates: Sequence[bytes], senders: Sequence[Member | None],
                     frames: Sequence[bytes | None]) -> None:
        """Updates to every member, in order, each member's share in one write; a sender (if
        one of ours) gets ``SyncStatus 1`` in place of its own update: Hocuspocus acknowledges
        each client Step2 and Update once it is applied."""
        if len(updates) > 1:
            for group in self._by_address.values():
                batch = [PreparedFrame.binary(group.encoder.sync_update(update))
                         for update in updates]
                fanout.acknowledged(group.members, batch, senders, group.ack)
            return
        update, sender = updates[0], senders[0]
        for group in self._by_address.values():
            frame: PreparedFrame | None = None
            for member in group.members:
                if member is sender:
                    member.connection.send_frame(group.ack)
                    continue
                if frame is None:
                    frame = PreparedFrame.binary(group.encoder.sync_update(update))
                member.connection.send_frame(frame)

    def send_presence(self, changes: Sequence[Change], max_frame: int) -> None:
        """Presence changes to every member, their owners included (a provider alone in a
        document hears its own renewals, which keeps its socket from looking dead)."""
        for entries in presence_wire.awareness_groups((c.entry for c in changes), max_frame):
            for group in self._by_address.values():
                frame = PreparedFrame.binary(group.encoder.awareness(entries))
                for member in group.members:
                    member.connection.send_frame(frame)

    def refuse(self, member: Member, error: InvalidMessage) -> None:
        """One document of the socket is closed with the error's code (Hocuspocus ``Close``)."""
        member.close(error.close_code, error.message)

    def broadcast_stateless(self, payload: str,
                            where: Callable[[Member], bool] | None = None) -> int:
        """A stateless message to every member (or those ``where`` accepts); returns how many
        got it."""
        sent = 0
        for group in self._by_address.values():
            frame: PreparedFrame | None = None
            for member in group.members:
                if where is not None and not where(member):
                    continue
                if frame is None:
                    frame = PreparedFrame.binary(group.encoder.stateless(payload))
                member.connection.send_frame(frame)
                sent += 1
        return sent


def _read_delete_set(decoder: _StrictDecoder) -> dict[int, list[tuple[int, int]]]:
    """A Yjs v1 delete set: per client, ranges ``(clock, length)``."""
    ranges: dict[int, list[tuple[int, int]]] = {}
    for _ in range(decoder.read_var_uint()):
        client = decoder.read_var_uint()
        ranges.setdefault(client, []).extend(
            (decoder.read_var_uint(), decoder.read_var_uint())
            for _ in range(decoder.read_var_uint()))
    return ranges


def _without_structs(update: bytes) -> _StrictDecoder | None:
    """A decoder positioned at the delete set of a v1 update, or ``None`` if the update holds
    structs."""
    decoder = _StrictDecoder(update)
    for _ in range(decoder.read_var_uint()):
        if decoder.read_var_uint():  # structs of one client
            return None
        decoder.read_var_uint()  # client
        decoder.read_var_uint()  # first clock
    return decoder


def holds_structs(update: bytes) -> bool:
    """Whether a v1 update inserts anything (its delete set aside)."""
    return _without_structs(update) is None


def adds_nothing(missing: bytes, deletions: bytes) -> bool:
    """Whether an update brings nothing new (Yjs ``snapshotContainsUpdate``).

    ``missing`` is the update reduced to what the document's state vector lacks
    (``get_update(update, state_vector)``); ``deletions`` is the document's own update against
    its state vector (no structs: its delete set). Nothing is new when ``missing`` holds no
    struct and every range it deletes is deleted already. Raises
    :class:`~captify_ws.errors.InvalidMessage` for bytes that are not a v1 update.
    """
    theirs = _without_structs(missing)
    if theirs is None:
        return False
    ours_decoder = _without_structs(deletions)
    if ours_decoder is None:
        raise InvalidMessage("the document's delete set holds structs")
    ours = _read_delete_set(ours_decoder)
    for client, ranges in _read_delete_set(theirs).items():
        deleted = sorted(ours.get(client, ()))
        for clock, length in ranges:
            if length and not _covered(deleted, clock, clock + length):
                return False
    return True


def _covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether sorted ``(clock, length)`` ranges cover ``[start, end)``."""
    position = start
    for clock, length in ranges:
        if clock > position:
            break
        position = max(position, clock + length)
        if position >= end:
            return True
    return position >= end
