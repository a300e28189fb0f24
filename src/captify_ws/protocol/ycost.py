"""What a Yjs update costs in memory once integrated, estimated in bytes.

yrs keeps about 50–470 bytes per struct (measured: text runs ~50, formatted text ~200, map
entries ~400, XML elements ~470) besides the content, and a room caches two encodings of the
whole document for joiners. Each applied update adds ``BYTE_COST × len(update) + STRUCT_COST ×
structs``; :class:`~captify_ws.ydoc.YDoc` sums it (``YDoc.cost``) and measures it again from the
document itself. For one client's update the struct count is in its header, so a large message
is costed from its first bytes, before it is copied or decoded.
"""

from __future__ import annotations

from typing import Final

from captify_ws.protocol import yupdate

#: Estimated bytes of memory per byte of Yjs update: the content in yrs, plus the full state
#: and the sync-step-2 frame a room caches for fresh joiners.
BYTE_COST: Final = 3
#: Estimated bytes of memory per struct (item or GC range) in yrs; the largest measured.
STRUCT_COST: Final = 480
#: Bytes of bookkeeping per surrogate pair the document holds (a Python int in a set).
ASTRAL_COST: Final = 64


def cost_of(update: bytes) -> int:
    """The estimated memory cost of integrating ``update``, bytes (cheap for one client's
    update; raises :class:`~captify_ws.errors.InvalidMessage` if it is not an update)."""
    structs = header_structs(update)
    if structs is None:
        structs = yupdate.scan(update).structs
    return BYTE_COST * len(update) + STRUCT_COST * structs


def header_structs(update: bytes) -> int | None:
    """The number of structs of an update with at most one client's structs, read from its
    header without reading the structs; ``None`` for more clients (or a malformed header)."""
    if len(update) < 2:
        return None
    if update[0] == 0:
        return 0
    if update[0] != 1:
        return None
    if update[1] < 0x80:
        return update[1]
    value = shift = 0
    for byte in update[1:11]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    return None


def cost_from_header(head: bytes, size: int) -> int | None:
    """The estimated memory cost (as :func:`cost_of`) of a one-client update of ``size``
    bytes whose first bytes are ``head``; ``None`` when the header does not tell."""
    structs = header_structs(head)
    return None if structs is None else BYTE_COST * size + STRUCT_COST * structs
