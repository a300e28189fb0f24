"""Yjs updates (encoding v1) read without integrating them, sans-I/O.

What captify-ws must know about an update before pycrdt integrates it, and the one rewrite it
does to one. The layout (Yjs ``encoding.js`` ``writeStructs``/``writeDeleteSet``; lib0 varuints)::

    update     := varuint(clients) { varuint(structs) varuint(client) varuint(clock) struct* }*
                  delete-set
    struct     := info:uint8 ...   info & 0x1f: 0 GC(len), 10 Skip(len), else an item:
                  [origin ID if info & 0x80] [right origin ID if info & 0x40]
                  [parent: varuint(1) varString(key) | varuint(0) ID, then
                   varString(parentSub) if info & 0x20 — only when info & 0xc0 == 0]
                  content by info & 0x1f: 1 deleted(len) 2 JSON(len, len × varString)
                  3 binary(varUint8Array) 4 string(varString) 5 embed(varString)
                  6 format(varString key, varString JSON) 7 type(varuint ref, varString name
                  for XmlElement 3 and XmlHook 5) 8 any(len, len × lib0 Any) 9 doc(varString, Any)
    delete-set := varuint(clients) { varuint(client) varuint(ranges)
                  { varuint(clock) varuint(len) }* }*

Clocks count UTF-16 code units for strings (a string item of ``"x👷"`` covers 3 clocks) and one
per element otherwise. An ``ID`` is ``varuint(client) varuint(clock)``.

Why: Yjs splits a string item between the two halves of a surrogate pair when an edit refers
to that position, replacing both halves with U+FFFD (``ContentString.splice``); yrs (under
pycrdt) keeps the whole character on the left and gets the item lengths wrong, so what it
encodes afterwards decodes differently in Yjs (docs/yjs-interop.md). :func:`scan` finds where an
update can split items and where its strings hold surrogate pairs;
:func:`captify_ws.protocol.ysplit.split_strings` makes the splits Yjs would make, so that pycrdt
never has to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from captify_ws.errors import InvalidMessage

#: A UTF-8 lead byte of a 4-byte sequence: a character outside the BMP (a surrogate pair in
#: UTF-16).
_ASTRAL_BYTES: Final = re.compile(rb"[\xf0-\xf4]")
#: A character outside the BMP: two UTF-16 code units (a surrogate pair).
ASTRAL_CHARS: Final = re.compile("[\U00010000-\U0010ffff]")

#: A point of one client's clock sequence: (client, clock).
Point = tuple[int, int]


@dataclass(slots=True)
class UpdateScan:
    """What :func:`scan` found in an update."""

    #: structs (items and GC ranges; Skip is not counted): the unit of yrs's memory cost
    structs: int = 0
    #: points at which integrating the update may split an item that exists already: right
    #: after an origin, at a right origin, at both ends of every deleted range
    splits: list[Point] = field(default_factory=list)
    #: (client, first clock, end clock) of each client's run of structs
    runs: list[tuple[int, int, int]] = field(default_factory=list)
    #: points of the update's own strings that fall between the halves of a surrogate pair
    #: (the clock of each low surrogate)
    astral: list[Point] = field(default_factory=list)
    #: (client, clock): the update refers to every clock of ``client`` below ``clock`` (its
    #: origins, right origins, parent IDs and deleted ranges); Yjs integrates it only when
    #: they are there, in the document or in the update (Yjs ``getMissing``, pending structs
    #: and delete sets)
    needs: list[Point] = field(default_factory=list)
    #: (client, clock): the update skips that client's clocks below ``clock`` (Skip structs):
    #: they must be in the document already
    gaps: list[Point] = field(default_factory=list)


class Reader:
    """A bounds-checked lib0 reader over one update."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def fail(self, what: str) -> InvalidMessage:
        return InvalidMessage(f"not a valid Yjs update ({what} at byte {self.pos})")

    def uint(self) -> int:
        data, pos = self.data, self.pos
        try:
            byte = data[pos]
            if byte < 0x80:
                self.pos = pos + 1
                return byte
            value = byte & 0x7F
            shift = 7
            while True:
                pos += 1
                byte = data[pos]
                value |= (byte & 0x7F) << shift
                if byte < 0x80:
                    self.pos = pos + 1
                    return value
                shift += 7
                if shift > 70:
                    raise self.fail("varuint too long")
        except IndexError:
            raise self.fail("truncated varuint") from None

    def skip(self, length: int) -> int:
        start = self.pos
        if length > self.end - start:
            raise self.fail("truncated content")
        self.pos = start + length
        return start

    def string(self) -> tuple[int, int]:
        """A varString: (start, end) of its UTF-8 bytes."""
        length = self.uint()
        start = self.skip(length)
        return start, start + length

    def any(self, depth: int = 0) -> None:
        if depth > 100:
            raise self.fail("nesting too deep")
        if self.pos >= self.end:
            raise self.fail("truncated value")
        kind = self.data[self.pos]
        self.pos += 1
        if kind in (127, 126, 121, 120):
            return
        if kind == 125:  # varint: continuation bit 0x80 on every byte
            while True:
                if self.pos >= self.end:
                    raise self.fail("truncated varint")
                byte = self.data[self.pos]
                self.pos += 1
                if byte < 0x80:
                    return
        if kind == 124:
            self.skip(4)
        elif kind in (123, 122):
            self.skip(8)
        elif kind == 119:
            self.string()
        elif kind == 118:
            for _ in range(self.uint()):
                self.string()
                self.any(depth + 1)
        elif kind == 117:
            for _ in range(self.uint()):
                self.any(depth + 1)
        elif kind == 116:
            self.skip(self.uint())
        else:
            raise self.fail(f"unknown value type {kind}")


def utf16_length(data: bytes, start: int, end: int) -> tuple[int, str | None]:
    """UTF-16 length of a UTF-8 string, and the string when it holds astral characters."""
    chunk = data[start:end]
    if chunk.isascii():
        return end - start, None
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage("not a valid Yjs update (a string is not UTF-8)") from None
    if _ASTRAL_BYTES.search(chunk) is None:
        return len(text), None
    return len(text) + len(ASTRAL_CHARS.findall(text)), text


def low_surrogates(text: str) -> list[int]:
    """UTF-16 offsets of the low surrogates of ``text``."""
    # Each earlier astral character adds one code unit to the offset of the ones after it.
    return [match.start() + earlier + 1
            for earlier, match in enumerate(ASTRAL_CHARS.finditer(text))]


def read_content(reader: Reader, info: int, client: int, clock: int, scan: UpdateScan) -> int:
    """Read an item's content; returns its length in clocks."""
    kind = info & 0x1F
    if kind == 4:
        start, end = reader.string()
        length, astral = utf16_length(reader.data, start, end)
        if astral is not None:
            scan.astral.extend((client, clock + offset) for offset in low_surrogates(astral))
        return length
    if kind == 1:
        return reader.uint()
    if kind == 2:
        count = reader.uint()
        for _ in range(count):
            reader.string()
        return count
    if kind == 8:
        count = reader.uint()
        for _ in range(count):
            reader.any()
        return count
    if kind in (3, 5):
        reader.string()
    elif kind == 6:
        reader.string()
        reader.string()
    elif kind == 7:
        if reader.uint() in (3, 5):
            reader.string()
    elif kind == 9:
        reader.string()
        reader.any()
    else:
        raise reader.fail(f"unknown content type {kind}")
    return 1


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at ``pos``: (value, position after it); IndexError when truncated."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 70:
            raise InvalidMessage("not a valid Yjs update (varuint too long)")


def scan(update: bytes) -> UpdateScan:
    """Read an update's structs and delete set (see the module docstring).

    Raises :class:`~captify_ws.errors.InvalidMessage` if it is not a v1 update. Written for
    the hot path (about 3 µs for a keystroke's update): string items, the common case, are
    read inline; other contents through :class:`Reader`.
    """
    data = update
    end = len(data)
    out = UpdateScan()
    splits = out.splits
    needs = out.needs
    varuint = _varuint
    try:
        clients, pos = varuint(data, 0)
        for _ in range(clients):
            count, pos = varuint(data, pos)
            client, pos = varuint(data, pos)
            clock, pos = varuint(data, pos)
            first = clock
            for _ in range(count):
                info = data[pos]
                pos += 1
                kind = info & 0x1F
                if kind == 0 or kind == 10:  # noqa: PLR1714 - the fastest test here
                    length, pos = varuint(data, pos)
                    clock += length
                    if kind == 0:
                        out.structs += 1
                    else:
                        out.gaps.append((client, clock))
                    continue
                if info & 0x80:
                    other, pos = varuint(data, pos)
                    at, pos = varuint(data, pos)
                    splits.append((other, at + 1))
                    needs.append((other, at + 1))
                if info & 0x40:
                    other, pos = varuint(data, pos)
                    at, pos = varuint(data, pos)
                    splits.append((other, at))
                    needs.append((other, at + 1))
                if not info & 0xC0:
                    has_key, pos = varuint(data, pos)
                    if has_key == 1:
                        length, pos = varuint(data, pos)
                        pos += length
                    else:
                        other, pos = varuint(data, pos)
                        at, pos = varuint(data, pos)
                        needs.append((other, at + 1))
                    if info & 0x20:
                        length, pos = varuint(data, pos)
                        pos += length
                if kind == 4:
                    size, pos = varuint(data, pos)
                    start = pos
                    pos += size
                    if pos > end:
                        raise IndexError
                    length, astral = utf16_length(data, start, pos)
                    if astral is not None:
                        out.astral.extend((client, clock + offset)
                                          for offset in low_surrogates(astral))
                else:
                    reader = Reader(data)
                    reader.pos = pos
                    length = read_content(reader, info, client, clock, out)
                    pos = reader.pos
                clock += length
                out.structs += 1
            out.runs.append((client, first, clock))
        clients, pos = varuint(data, pos)
        for _ in range(clients):
            client, pos = varuint(data, pos)
            ranges, pos = varuint(data, pos)
            for _ in range(ranges):
                clock, pos = varuint(data, pos)
                length, pos = varuint(data, pos)
                splits.append((client, clock))
                splits.append((client, clock + length))
                needs.append((client, clock + length))
    except IndexError:
        raise InvalidMessage("not a valid Yjs update (truncated)") from None
    if pos != end:
        raise InvalidMessage("not a valid Yjs update (trailing bytes)")
    return out
