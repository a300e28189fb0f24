"""What integrating updates as Yjs does (``ydoc.py``) costs, beside plain pycrdt, on a large
document: per update on the hot path, and once when an edit splits a surrogate pair.

    taskset -c 0 .venv/bin/python bench/yjs_fidelity.py      # one JSON line per case

Cases: a 1 MB text built from 20,000 updates by one author (no character outside the BMP:
the plain path), the same with an emoji every 50 characters (every later update is read in
Python first), and the rebuild an edit between the halves of a pair causes on it.
Medians of 5 repeats.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from pycrdt import Doc, Text

from captify_ws.ydoc import YDoc


def _document(emoji: bool) -> tuple[list[bytes], list[bytes]]:
    """(updates building the document, 1,000 typing updates after it)."""
    source: Doc[Any] = Doc()
    text = source.get("t", type=Text)
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    rand = random.Random(7)
    piece = "x" * 48 + ("👷" if emoji else "yy")
    for _ in range(20_000):
        text.insert(len(text), piece)
    built = list(updates)
    updates.clear()
    length = len(text)
    for _ in range(1_000):
        at = rand.randint(0, 20_000) * len(piece.encode())  # pycrdt counts UTF-8 bytes
        text.insert(min(at, length), "ab")
        length += 2
    return built, list(updates)


def _per_update(built: list[bytes], typing: list[bytes], faithful: bool) -> float:
    doc: Any = YDoc() if faithful else Doc()
    for update in built:
        doc.apply(update) if faithful else doc.apply_update(update)
    started = time.perf_counter()
    for update in typing:
        doc.apply(update) if faithful else doc.apply_update(update)
    return (time.perf_counter() - started) / len(typing) * 1e6


def _split_cost(built: list[bytes]) -> tuple[float, int]:
    """Milliseconds to integrate one update that splits a pair (the rebuild), and the size of
    the document's encoding."""
    ydoc = YDoc()
    for update in built:
        ydoc.apply(update)
    encoded = ydoc.encode()
    # Another client inserts between the halves of the first emoji (UTF-16 index 49 of its
    # first run): Yjs's encoding of "Z" with origin (author, 48) and right origin (author, 49).
    author = Doc()
    author.apply_update(encoded)
    client_id = next(iter(_clients(ydoc.state_vector())))
    update = _insert_between(client_id, 48)
    started = time.perf_counter()
    ydoc.apply(update)
    elapsed = (time.perf_counter() - started) * 1000
    assert ydoc.rebuilds == 1
    return elapsed, len(encoded)


def _clients(state_vector: bytes) -> dict[int, int]:
    from captify_ws.ydoc import read_state_vector

    return read_state_vector(state_vector)


def _uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _insert_between(author: int, high: int) -> bytes:
    """A v1 update: client 1 inserts "Z" after (author, high), before (author, high + 1)."""
    return (b"\x01\x01" + _uint(1) + _uint(0) + b"\xc4" + _uint(author) + _uint(high)
            + _uint(author) + _uint(high + 1) + b"\x01Z" + b"\x00")


def main() -> None:
    for emoji in (False, True):
        built, typing = _document(emoji)
        plain = statistics.median(_per_update(built, typing, False) for _ in range(5))
        faithful = statistics.median(_per_update(built, typing, True) for _ in range(5))
        row: dict[str, Any] = {"document": "1 MB text, 20,000 updates" + (
            ", an emoji every 50 characters" if emoji else ", BMP only"),
            "pycrdt_us_per_update": round(plain, 1), "ydoc_us_per_update": round(faithful, 1)}
        if emoji:
            costs = [_split_cost(built) for _ in range(5)]
            row["split_rebuild_ms"] = round(statistics.median(c[0] for c in costs), 1)
            row["encoded_bytes"] = costs[0][1]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
