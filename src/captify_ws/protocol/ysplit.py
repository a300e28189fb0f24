"""The one rewrite captify-ws does to a Yjs update (encoding v1), sans-I/O: string items cut
where Yjs would cut them between the halves of a surrogate pair.

Yjs splits a string item between the two halves of a surrogate pair when an edit refers to that
position, replacing both halves with U+FFFD (``ContentString.splice``); yrs (under pycrdt) does
not (docs/yjs-interop.md). :func:`split_strings` rewrites an update so that it already holds
those splits. The update layout and the reader are in :mod:`captify_ws.protocol.yupdate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from captify_ws.protocol.yupdate import (
    ASTRAL_CHARS,
    Reader,
    UpdateScan,
    low_surrogates,
    read_content,
    utf16_length,
)

REPLACEMENT: Final = "\ufffd"


def _write_uint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def _write_string(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    _write_uint(out, len(data))
    out += data


def _units(text: str) -> int:
    return len(text) + len(ASTRAL_CHARS.findall(text))


def _cut(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut at the UTF-16 offsets of low surrogates, each cut pair's halves replaced by
    U+FFFD, as Yjs's ``ContentString.splice`` does."""
    units = text.encode("utf-16-le")
    pieces = []
    start = 0
    prefix = ""
    for cut in cuts:
        pieces.append(prefix + units[2 * start:2 * (cut - 1)].decode("utf-16-le") + REPLACEMENT)
        prefix = REPLACEMENT
        start = cut + 1
    pieces.append(prefix + units[2 * start:].decode("utf-16-le"))
    return pieces


def split_strings(update: bytes, points: Mapping[int, Iterable[int]]) -> tuple[bytes, int]:
    """The same update with every string item cut at ``points`` that fall inside one of its
    surrogate pairs, the halves replaced by U+FFFD — what Yjs holds after such a split.

    The right part of a cut is a new item whose origin is the last unit of the left part and
    whose right origin is the item's (Yjs ``splitItem``); delete set and other structs are
    copied byte for byte. Returns the update and the number of cuts made (0: unchanged bytes).
    """
    wanted = {client: set(clocks) for client, clocks in points.items() if clocks}
    reader = Reader(update)
    uint = reader.uint
    out = bytearray()
    cuts_made = 0
    clients = uint()
    _write_uint(out, clients)
    for _ in range(clients):
        count = uint()
        client = uint()
        clock = first = uint()
        cuts_here = wanted.get(client, set())
        structs = bytearray()
        written = 0
        for _ in range(count):
            begin = reader.pos
            info = update[reader.pos]
            reader.pos += 1
            kind = info & 0x1F
            if kind in (0, 10):
                clock += uint()
                structs += update[begin:reader.pos]
                written += 1
                continue
            right: bytes = b""
            if info & 0x80:
                uint()
                uint()
            if info & 0x40:
                right_start = reader.pos
                uint()
                uint()
                right = update[right_start:reader.pos]
            if not info & 0xC0:
                if uint() == 1:
                    reader.string()
                else:
                    uint()
                    uint()
                if info & 0x20:
                    reader.string()
            header_end = reader.pos
            if kind == 4:
                start, end = reader.string()
                length, astral = utf16_length(update, start, end)
                inside = [offset for offset in low_surrogates(astral)
                          if clock + offset in cuts_here] if astral else []
                if inside:
                    pieces = _cut(astral or "", inside)
                    structs += update[begin:header_end]
                    _write_string(structs, pieces[0])
                    position = clock + _units(pieces[0])
                    for piece in pieces[1:]:
                        structs.append(0x84 | (info & 0x40))
                        _write_uint(structs, client)
                        _write_uint(structs, position - 1)
                        structs += right
                        _write_string(structs, piece)
                        position += _units(piece)
                    written += len(pieces)
                    cuts_made += len(pieces) - 1
                    clock += length
                    continue
                clock += length
            else:
                clock += read_content(reader, info, client, clock, UpdateScan())
            structs += update[begin:reader.pos]
            written += 1
        _write_uint(out, written)
        _write_uint(out, client)
        _write_uint(out, first)
        out += structs
    out += update[reader.pos:]
    return bytes(out), cuts_made
