"""JSON of a whole document encoded in turns of the event loop (rooms/turns.py, issue 13): the
same text as ``json.dumps``, and the loop serves others while a large document is encoded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from captify_ws.rooms.turns import PIECE_CHARS, PIECE_VALUES, dumps_in_turns, json_pieces

#: strings past the piece size, cut anywhere (escapes, quotes, astral characters, controls)
long_texts = st.builds(lambda part, count: part * count,
                       st.text(min_size=1, max_size=40), st.integers(PIECE_CHARS // 40 + 1,
                                                                     PIECE_CHARS // 4))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(), long_texts)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=PIECE_VALUES + 40),
        st.dictionaries(st.text(max_size=8), children, max_size=PIECE_VALUES + 40),
        st.dictionaries(st.integers(), children, max_size=4)),  # keys json.dumps converts
    max_leaves=2000)


@given(value=values)
@settings(max_examples=200, deadline=None)
def test_the_pieces_are_json_dumps(value: Any) -> None:
    """Whatever the value, the pieces join to exactly ``json.dumps``'s text."""
    assert "".join(json_pieces(value)) == json.dumps(value)


def _document(paragraphs: int) -> dict[str, Any]:
    """A ProseMirror document's JSON (``Node.to_json``) with marks, attributes and unicode."""
    return {"type": "doc", "content": [
        {"type": "paragraph", "attrs": {"level": number % 3}, "content": [
            {"type": "text", "text": f"paragraph {number} é 😀 \"quoted\"\n"},
            {"type": "text", "marks": [{"type": "bold"}, {"type": "link",
                                                           "attrs": {"href": "/a?b=c"}}],
             "text": "x" * (number % 50)}]}
        for number in range(paragraphs)]}


def test_one_long_text_is_cut_into_pieces() -> None:
    """A 10 MB text node (adjacent texts merge in ProseMirror) is many pieces, json.dumps's
    text together."""
    node = {"type": "text", "text": "é😀\"\n\x01" * (2 << 20)}
    pieces = list(json_pieces(node))
    assert len(pieces) > 100 and max(map(len, pieces)) <= 12 * PIECE_CHARS
    assert "".join(pieces) == json.dumps(node)


async def test_a_large_document_leaves_turns_to_others() -> None:
    """While a 40,000-paragraph document is encoded, another task runs many times, and the
    text is ``json.dumps``'s."""
    document = _document(40_000)
    ticks = 0
    done = False

    async def other() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = ticks
    text = await dumps_in_turns(document, turn_s=0.001)
    done = True
    await task
    assert text == json.dumps(document)
    assert ticks - before > 5  # one turn in one piece would give the other task one tick
