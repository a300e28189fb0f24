"""Version content and diffs (history/content.py): the operations a diff lists rebuild the
later content from the earlier one, whatever the texts and documents."""

from __future__ import annotations

import random
import time
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.history import content
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


@given(TEXT, TEXT)
def test_operations_rebuild_the_text_when_the_budgets_are_exceeded(before: str,
                                                                   after: str) -> None:
    """With budgets small enough that these short texts exceed them, the line-by-line and
    whole-replacement paths of diff_opcodes still give operations that rebuild the text."""
    with mock.patch.multiple(content, DIFF_BUDGET=6, LINE_BUDGET=3, MAX_LINES=3):
        ops = text_diff(before, after)
    assert _apply_text(before, ops) == after
    assert (ops == []) == (before == after)


def _texts(kind: str, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    words = [f"w{index}" for index in range(150)]
    if kind == "prose, 5% of the words changed":  # 5,000 words: not done in 5 minutes
        tokens = [rng.choice(words) for _ in range(5000)]
        before = " ".join(tokens)
        for index in range(0, len(tokens), 20):
            tokens[index] = rng.choice(words)
        return before, " ".join(tokens)
    if kind == "two words at random":  # 10 KB of "a b a a b": 65 s
        return (" ".join(rng.choice("ab") for _ in range(20000)),
                " ".join(rng.choice("ab") for _ in range(20000)))
    lines = [f"line {index} {rng.choice(words)}\n" for index in range(30000)]
    shuffled = lines[:]
    rng.shuffle(shuffled)  # 30,000 lines: 13 s with lines matched without a bound
    return "".join(lines), "".join(shuffled)


@pytest.mark.parametrize("kind", ["prose, 5% of the words changed", "two words at random",
                                  "lines shuffled"])
def test_a_diff_of_large_texts_is_bounded(kind: str) -> None:
    """GET …/diff ran difflib over every word of both versions: 5,000 words of prose with
    one word in twenty changed did not finish in 5 minutes (a thread of the server's
    executor and the GIL held meanwhile). Every kind of large text is now diffed within 10 s
    (it takes well under a second here), and the operations still rebuild the text."""
    for seed in (1, 2):
        before, after = _texts(kind, seed)
        started = time.monotonic()
        ops = text_diff(before, after)
        assert time.monotonic() - started < 10, kind
        assert _apply_text(before, ops) == after
