"""The Yjs update reader and the surrogate-pair cut, against updates pycrdt writes."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, get_state

from captify_ws.errors import InvalidMessage
from captify_ws.protocol.ysplit import split_strings
from captify_ws.protocol.yupdate import scan
from captify_ws.ydoc import YDoc, read_state_vector

pytestmark = pytest.mark.unit

PIECES = st.sampled_from(["a", "é", "👷", "中", "e\u0301", "😀x", "🇫🇷", ""])
EDITS = st.lists(st.tuples(st.sampled_from(["text", "xml", "map", "array", "delete"]),
                           st.integers(0, 50), PIECES), min_size=1, max_size=25)


def _edit(doc: Doc[Any], kind: str, at: int, piece: str) -> None:
    text = doc.get("text", type=Text)
    if kind == "text":
        content = str(text)
        cut = min(at, len(content))
        text.insert(len(content[:cut].encode()), piece or "z", {"bold": True} if at % 3 else None)
    elif kind == "delete" and str(text):
        content = str(text)
        cut = min(at, len(content) - 1)
        del text[len(content[:cut].encode()):len(content[:cut + 1].encode())]
    elif kind == "xml":
        fragment = doc.get("xml", type=XmlFragment)
        element = fragment.children.append(XmlElement("p", {"n": str(at)}))
        element.children.append(XmlText(piece or "t"))
    elif kind == "map":
        doc.get("map", type=Map)[f"k{at}"] = {"v": [at, piece, None, 1.5, True]}
    elif kind == "array":
        doc.get("array", type=Array).append(Map({"x": at}))


@settings(max_examples=150, deadline=None)
@given(EDITS)
def test_scan_reads_every_update_pycrdt_writes(edits: list[tuple[str, int, str]]) -> None:
    """Each client run ends where the update's state vector says (generated documents of
    text, formatting, XML, maps and arrays)."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for edit in edits:
        _edit(doc, *edit)
    for update in [*updates, doc.get_update()]:
        found = scan(update)
        # Yjs and yrs derive a state vector from an update only for runs that start at 0.
        ends = {client: end for client, first, end in found.runs if first == 0}
        assert ends == read_state_vector(get_state(update))


def test_truncated_and_trailing_bytes_are_refused() -> None:
    """A cut-off update or one with trailing bytes is not an update."""
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, "héllo 👷")
    update = doc.get_update()
    for bad in (update[:-3], update[:5], update + b"\x00", b"\x05"):
        with pytest.raises(InvalidMessage):
            scan(bad)


def test_split_cuts_a_pair_as_yjs_does() -> None:
    """'x👷y' cut at its low surrogate becomes 'x\\ufffd' + '\\ufffdy', the right part an item
    after the left one; pycrdt shows what Yjs shows."""
    original = base64.b64decode("AQEBAAQBBHRleHQGePCfkbd5AA==")  # Yjs: client 1 types x👷y
    assert scan(original).astral == [(1, 2)]
    cut, cuts = split_strings(original, {1: {2}})
    assert cuts == 1
    found = scan(cut)
    assert found.structs == 2 and found.astral == [] and found.splits == [(1, 2)]
    doc: Doc[Any] = Doc()
    doc.apply_update(cut)
    assert str(doc.get("text", type=Text)) == "x\ufffd\ufffdy"
    assert split_strings(original, {1: {3}}) == (original, 0)


def test_ydoc_integrates_a_split_as_yjs() -> None:
    """The issue's updates: 'x👷y', then 'Z' inserted at UTF-16 index 2 by another client."""
    ydoc = YDoc()
    ydoc.apply(base64.b64decode("AQEBAAQBBHRleHQGePCfkbd5AA=="))
    ydoc.apply(base64.b64decode("AQECAMQBAQECAVoA"))
    assert ydoc.rebuilds == 1
    assert str(ydoc.doc.get("text", type=Text)) == "x\ufffdZ\ufffdy"
    again = Doc()
    again.apply_update(ydoc.encode())
    assert str(again.get("text", type=Text)) == "x\ufffdZ\ufffdy"
