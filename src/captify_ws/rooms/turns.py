"""Work on a whole document in turns of the event loop, so that no other connection waits for it.

Encoding the JSON of a large document (a ProseMirror snapshot at unload: one ``json.dumps`` of
12 MB held the loop 100-200 ms under the hostile load of issue 13) is pure CPU under the GIL; a
thread does not help, since the C encoder never releases it. :func:`dumps_in_turns` encodes the
value piece by piece (each container past a few hundred values member by member, each string
past 64 Ki characters in parts of that size, everything smaller in one ``json.dumps``) and
yields to the event loop whenever a turn has taken :data:`TURN_S`: the longest hold is then one
piece, about a millisecond.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from time import perf_counter
from typing import Any, Final

#: Seconds of encoding after which the event loop gets a turn.
TURN_S: Final = 0.004

#: A container with fewer values than this (counted through its children) is one piece.
PIECE_VALUES: Final = 256

#: A string longer than this (characters) is encoded this many characters at a time: the text
#: nodes of a ProseMirror document merge into one string per paragraph (tens of MB).
PIECE_CHARS: Final = 1 << 16


def _small(value: Any) -> bool:
    """Whether ``value`` holds fewer than :data:`PIECE_VALUES` values, containers included,
    and no string longer than :data:`PIECE_CHARS` (walked no further than that)."""
    budget = PIECE_VALUES
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget <= 0:
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str) and len(item) > PIECE_CHARS:
            return False
    return True


def json_pieces(value: Any) -> Iterator[str]:
    """The text of ``json.dumps(value)``, in pieces whose concatenation is exactly that text.
    Raises what ``json.dumps`` raises (``TypeError`` for a value JSON cannot hold)."""
    if isinstance(value, dict) and value and not _small(value):
        if not all(isinstance(key, str) for key in value):
            yield json.dumps(value)  # keys json.dumps converts (numbers, None…): one piece
            return
        separator = "{"
        for key, item in value.items():
            yield separator + json.dumps(key) + ": "
            yield from json_pieces(item)
            separator = ", "
        yield "}"
    elif isinstance(value, list | tuple) and value and not _small(value):
        separator = "["
        for item in value:
            yield separator
            yield from json_pieces(item)
            separator = ", "
        yield "]"
    elif isinstance(value, str) and len(value) > PIECE_CHARS:
        # JSON escapes one code point at a time (RFC 8259 §7): the text of the whole is the
        # texts of its parts, each without its quotes.
        yield '"'
        for start in range(0, len(value), PIECE_CHARS):
            yield json.dumps(value[start:start + PIECE_CHARS])[1:-1]
        yield '"'
    else:
        yield json.dumps(value)


async def dumps_in_turns(value: Any, turn_s: float = TURN_S) -> str:
    """``json.dumps(value)`` (the same text), giving the event loop a turn every ``turn_s``
    seconds of encoding. Raises what ``json.dumps`` raises."""
    parts: list[str] = []
    started = perf_counter()
    for piece in json_pieces(value):
        parts.append(piece)
        if perf_counter() - started > turn_s:
            await asyncio.sleep(0)
            started = perf_counter()
    return "".join(parts)
