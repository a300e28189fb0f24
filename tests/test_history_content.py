"""Version content and diffs (history/content.py): the operations a diff lists rebuild the
later content from the earlier one, whatever the texts and documents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.history.content import prosemirror_diff, text_diff

pytestmark = pytest.mark.unit

TEXT = st.text(alphabet=st.sampled_from("ab cé👷\n,."), max_size=40)


def _apply_text(before: str, ops: list[dict[str, Any]]) -> str:
    """Apply ``{op, at, text}`` operations, positions in ``before``, in their order."""
    out: list[str] = []
    position = 0
    for op in ops:
        out.append(before[position:op["at"]])
        position = max(position, op["at"])  # an insertion follows the deletion it replaces
        if op["op"] == "delete":
            assert before[position:position + len(op["text"])] == op["text"]
            position += len(op["text"])
        else:
            out.append(op["text"])
    out.append(before[position:])
    return "".join(out)


@given(TEXT, TEXT)
def test_text_operations_rebuild_the_later_text(before: str, after: str) -> None:
    """Deleting and inserting as listed turns the earlier text into the later one; equal
    texts have no operations."""
    ops = text_diff(before, after)
    assert _apply_text(before, ops) == after
    assert (ops == []) == (before == after)


def test_text_operations_are_words() -> None:
    """A changed word is one deletion and one insertion at the word's position."""
    assert text_diff("the quick fox", "the slow fox") == [
        {"op": "delete", "at": 4, "text": "quick"}, {"op": "insert", "at": 4, "text": "slow"}]


def _paragraph(text: str) -> dict[str, Any]:
    return {"type": "paragraph", "content": [{"type": "text", "text": text}]} if text else \
        {"type": "paragraph"}


@given(st.lists(TEXT, max_size=6), st.lists(TEXT, max_size=6))
def test_block_operations_rebuild_the_later_document(before: list[str],
                                                     after: list[str]) -> None:
    """Blocks deleted, inserted and changed as listed turn the earlier ProseMirror document
    into the later one; a changed block's text operations rebuild its text."""
    old = {"type": "doc", "content": [_paragraph(t) for t in before]}
    new = {"type": "doc", "content": [_paragraph(t) for t in after]}
    rebuilt: list[Any] = []
    position = 0
    for op in prosemirror_diff(old, new):
        rebuilt.extend(old["content"][position:op["index"]])
        position = max(position, op["index"])
        if op["op"] == "delete":
            position += len(op["nodes"])
        elif op["op"] == "insert":
            rebuilt.extend(op["nodes"])
        else:
            assert op["before"] == old["content"][position]
            text = "".join(c["text"] for c in op["before"].get("content", ()))
            later = "".join(c["text"] for c in op["after"].get("content", ()))
            assert _apply_text(text, op["text"]) == later
            rebuilt.append(op["after"])
            position += 1
    rebuilt.extend(old["content"][position:])
    assert rebuilt == new["content"]
