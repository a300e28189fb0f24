"""Yjs state vectors, sans-I/O: what part of a client's state vector matters to a document.

A state vector (lib0: varuint count, then count × (varuint clientID, varuint clock)) says how
much of each client's edits its sender has. What a document sends in answer (sync step 2, JSON
``synced``) depends only on the entries for clients the document knows: entries for other
clients change nothing. :func:`relevant_entries` drops them, so that every client that has none
of the document's clients (a fresh editor, or a state vector made up to miss every cache) gets
the cached full-state answer instead of a fresh encoding of the whole document.
"""

from __future__ import annotations

from typing import Final

from captify_ws.errors import InvalidMessage

#: The state vector of a client that has nothing.
EMPTY: Final = b"\x00"


def decode(state_vector: bytes) -> dict[int, int]:
    """``{clientID: clock}``; raises :class:`InvalidMessage` for a malformed state vector."""
    values: list[int] = []
    value = shift = 0
    for byte in state_vector:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            values.append(value)
            value = shift = 0
        else:
            shift += 7
            if shift > 56:
                raise InvalidMessage("state vector: varuint longer than 8 bytes")
    if shift or not values or values[0] * 2 != len(values) - 1:
        raise InvalidMessage("not a valid Yjs state vector")
    return dict(zip(values[1::2], values[2::2], strict=True))


def _var_uint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


def encode(entries: dict[int, int]) -> bytes:
    out = bytearray()
    _var_uint(len(entries), out)
    for client, clock in entries.items():
        _var_uint(client, out)
        _var_uint(clock, out)
    return bytes(out)


def relevant_entries(state_vector: bytes, known: bytes) -> bytes:
    """``state_vector`` without the clients that ``known`` (the document's own state vector)
    does not have: the same answer, and :data:`EMPTY` when nothing is left."""
    if state_vector == EMPTY:
        return EMPTY
    ours = decode(known)
    theirs = decode(state_vector)
    kept = {client: clock for client, clock in theirs.items() if ours.get(client, 0) > 0}
    if not kept:
        return EMPTY
    if len(kept) == len(theirs):
        return state_vector
    return encode(kept)
