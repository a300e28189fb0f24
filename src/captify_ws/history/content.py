"""What a version holds, how two versions differ, and the forward change that restores one.

Sans-I/O: Yjs states (bytes) in, JSON-ready values and Yjs updates out.

Restoring as a forward change: a document that was at version ``V`` and is now at ``C`` got
there by the update ``C - V`` (the structs ``V`` lacks, and the deletions since). Applied to a
copy of ``V`` under a tracked origin, that update is what a Yjs ``UndoManager`` can undo: undoing
it deletes what was inserted since and inserts again (as new items) what was deleted since —
exactly what ``Y.UndoManager`` does for an editor's undo. The undo is encoded against ``C`` and
applied like any edit, so every client receives it and history is never truncated. The root
types of a document are not in its encoding, so every root is tracked as what it is to the
undo manager: a branch.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from typing import Any, Final

from pycrdt import Array, Doc, Map, Text, UndoManager, XmlElement, XmlFragment, XmlText

from captify_ws.errors import InvalidMessage
from captify_ws.protocol import yupdate
from captify_ws.rooms.pm_yjs import fragment_to_json
from captify_ws.ydoc import read_state_vector

#: text runs of one kind, for diffs: words, spaces, anything else one character at a time
_TOKENS: Final = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)


def _doc(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return doc


def restore_update(version_state: bytes, current_state: bytes) -> bytes:
    """The Yjs update that takes a document from ``current_state`` back to the content of
    ``version_state`` as a forward change (see the module docstring); empty content when
    nothing differs. ``version_state`` must be an earlier state of the same document."""
    scratch = _doc(version_state)
    at_version = scratch.get_state()
    current = _doc(current_state)
    since = current.get_update(at_version)
    names = sorted(set(scratch.keys()) | set(current.keys()))
    undo = UndoManager(scopes=[scratch.get(name, type=Array) for name in names],
                       capture_timeout_millis=0)
    origin = object()
    undo.include_origin(origin)
    with scratch.transaction(origin=origin):
        scratch.apply_update(since)
    before = scratch.get_state()
    if undo.can_undo():
        undo.undo()
    return scratch.get_update(before)


def root_kinds(state: bytes) -> dict[str, str]:
    """Each root of a document and what it holds: ``"xml"`` (a ``Y.XmlFragment`` with
    elements), ``"map"``, ``"text"``, ``"array"`` or ``"empty"`` (nothing visible). The kind
    is read from the content, since the encoding does not say."""
    kinds: dict[str, str] = {}
    for name in sorted(_doc(state).keys()):
        kinds[name] = "empty"
        for kind, probe in (("xml", _is_xml), ("map", _is_map), ("text", _is_text),
                            ("array", _is_array)):
            if probe(_doc(state), name):
                kinds[name] = kind
                break
    return kinds


def _is_xml(doc: Doc[Any], name: str) -> bool:
    children = list(doc.get(name, type=XmlFragment).children)
    return bool(children) and all(isinstance(c, (XmlElement, XmlText)) for c in children)


def _is_map(doc: Doc[Any], name: str) -> bool:
    return len(doc.get(name, type=Map)) > 0


def _is_text(doc: Doc[Any], name: str) -> bool:
    return len(str(doc.get(name, type=Text))) > 0


def _is_array(doc: Doc[Any], name: str) -> bool:
    return len(doc.get(name, type=Array)) > 0


def contents(state: bytes) -> dict[str, dict[str, Any]]:
    """A version's readable content: ``{"text": {root: str}, "prosemirror": {root: JSON}}``
    for its ``Y.Text`` and ``Y.XmlFragment`` roots (ProseMirror JSON as y-prosemirror's
    ``yXmlFragmentToProsemirrorJSON`` gives it)."""
    text: dict[str, str] = {}
    prosemirror: dict[str, Any] = {}
    for name, kind in root_kinds(state).items():
        if kind == "text":
            text[name] = str(_doc(state).get(name, type=Text))
        elif kind == "xml":
            prosemirror[name] = fragment_to_json(_doc(state).get(name, type=XmlFragment))
    return {"text": text, "prosemirror": prosemirror}


def first_client(update: bytes) -> int | None:
    """The Yjs client id of an update's first structs, read from its header (an update from
    one editor has only its own); ``None`` when there are none or the header is not one."""
    reader = yupdate.Reader(update)
    try:
        if reader.uint() < 1:
            return None
        reader.uint()  # how many structs
        return reader.uint()
    except InvalidMessage:  # truncated: not a header
        return None


def _state_vector(clocks: dict[int, int]) -> bytes:
    out = bytearray()
    for number in (len(clocks), *(part for pair in clocks.items() for part in pair)):
        rest = number
        while rest >= 0x80:
            out.append((rest & 0x7F) | 0x80)
            rest >>= 7
        out.append(rest)
    return bytes(out)


def inserted_by_client(before_state: bytes, after_state: bytes) -> dict[int, dict[str, list[str]]]:
    """Who typed what: for each Yjs client with structs after ``before_state``, the text it
    inserted into each ``Y.Text`` root and still there in ``after_state`` (``{client: {root:
    [run…]}}``). Read by applying only that client's new structs (and the deletions) to a
    copy of ``before_state``; runs that depend on another client's new content are left
    out (attribution where it is known)."""
    after = _doc(after_state)
    have = read_state_vector(_doc(before_state).get_state())
    clocks = read_state_vector(after.get_state())
    roots = [name for name, kind in root_kinds(after_state).items() if kind == "text"]
    texts = {name: str(_doc(before_state).get(name, type=Text)) for name in roots}
    out: dict[int, dict[str, list[str]]] = {}
    for client, clock in clocks.items():
        if clock <= have.get(client, 0):
            continue
        partial = after.get_update(_state_vector({**clocks, client: have.get(client, 0)}))
        copy = _doc(before_state)
        copy.apply_update(partial)
        runs = {name: [op["text"] for op in text_diff(texts[name],
                                                      str(copy.get(name, type=Text)))
                       if op["op"] == "insert" and op["text"].strip()] for name in roots}
        runs = {name: found for name, found in runs.items() if found}
        if runs:
            out[client] = runs
    return out


#: the largest ``len(a) * len(b)`` given to difflib at once: its matcher costs about that
#: times the number of matching blocks (tokens of prose 5% edited: 1,000 x 1,000 in 0.13 s,
#: 2,000 x 2,000 in 5 s, 5,000 words not done in 5 minutes), so longer stretches are matched
#: by lines first and a stretch still too long is one replacement: correct, not minimal
DIFF_BUDGET: Final = 1_000_000
#: pairs of equal items above which a longer stretch is not matched either: lines (mostly
#: unique) of a 1 MB document, but not 10,000 repeats of one line
LINE_BUDGET: Final = 100_000
#: and the longest such stretch (8,000 shuffled lines took 2 s, 30,000 13 s)
MAX_LINES: Final = 4_000

Opcodes = list[tuple[str, int, int, int, int]]


def _work(old: list[str], new: list[str]) -> int:
    """How many (i, j) with ``old[i] == new[j]`` (what one difflib pass looks at)."""
    counts: dict[str, int] = {}
    for item in new:
        counts[item] = counts.get(item, 0) + 1
    return sum(counts.get(item, 0) for item in old)


def _matched(old: list[str], new: list[str]) -> Opcodes:
    """difflib's opcodes within ``DIFF_BUDGET``, else one ``replace``."""
    if not old or not new or len(old) * len(new) <= DIFF_BUDGET or \
            (max(len(old), len(new)) <= MAX_LINES and _work(old, new) <= LINE_BUDGET):
        return list(difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes())
    return [("replace", 0, len(old), 0, len(new))]


def _lines(tokens: list[str]) -> list[int]:
    """The token index where each line starts (a line ends with a token holding a newline),
    and the end."""
    starts = [0]
    for index, token in enumerate(tokens):
        if "\n" in token and index + 1 < len(tokens):
            starts.append(index + 1)
    return [*starts, len(tokens)]


def diff_opcodes(old: list[str], new: list[str]) -> Opcodes:
    """``(tag, i1, i2, j1, j2)`` taking ``old`` to ``new`` (difflib's tags), in time bounded by
    ``DIFF_BUDGET`` whatever the input: the common start and end are cut off, the rest is
    matched token by token when small enough, else line by line with each changed stretch
    matched token by token when small enough, else replaced whole."""
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    a, b = old[head:len(old) - tail], new[head:len(new) - tail]
    if not a or not b or len(a) * len(b) <= DIFF_BUDGET:
        middle = _matched(a, b)
    else:
        la, lb = _lines(a), _lines(b)
        middle = []
        for tag, i1, i2, j1, j2 in _matched(
                ["".join(a[x:y]) for x, y in itertools.pairwise(la)],
                ["".join(b[x:y]) for x, y in itertools.pairwise(lb)]):
            t1, t2, u1, u2 = la[i1], la[i2], lb[j1], lb[j2]
            if tag != "replace":
                middle.append((tag, t1, t2, u1, u2))
                continue
            middle += [(kind, t1 + x1, t1 + x2, u1 + y1, u1 + y2) for kind, x1, x2, y1, y2
                       in _matched(a[t1:t2], b[u1:u2])]
    return [(tag, i1 + head, i2 + head, j1 + head, j2 + head)
            for tag, i1, i2, j1, j2 in middle if tag != "equal"]


def text_diff(before: str, after: str) -> list[dict[str, Any]]:
    """What was deleted and inserted, as ``{op, at, text}`` in order (``at``: the position
    in ``before``, in code points), by words, spaces and punctuation; bounded in time
    (``diff_opcodes``)."""
    old, new = _TOKENS.findall(before), _TOKENS.findall(after)
    ops: list[dict[str, Any]] = []
    positions = [0]
    for token in old:
        positions.append(positions[-1] + len(token))
    for tag, i1, i2, j1, j2 in diff_opcodes(old, new):
        if tag in ("delete", "replace"):
            ops.append({"op": "delete", "at": positions[i1], "text": "".join(old[i1:i2])})
        if tag in ("insert", "replace"):
            ops.append({"op": "insert", "at": positions[i1], "text": "".join(new[j1:j2])})
    return ops


def _block_text(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    if node.get("type") == "text":
        return str(node.get("text", ""))
    return "".join(_block_text(child) for child in node.get("content", ()))


def prosemirror_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level blocks deleted, inserted or changed between two ProseMirror documents, as
    ``{op, index, node(s)…}`` (``index``: in ``before``); a changed block carries the text
    diff of its content."""
    old = list(before.get("content", ()))
    new = list(after.get("content", ()))
    keys = [json.dumps(node, sort_keys=True) for node in old]
    ops: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in diff_opcodes(keys, [json.dumps(n, sort_keys=True)
                                                   for n in new]):
        if tag == "replace" and i2 - i1 == j2 - j1:
            for offset in range(i2 - i1):
                ops.append({"op": "change", "index": i1 + offset, "before": old[i1 + offset],
                            "after": new[j1 + offset],
                            "text": text_diff(_block_text(old[i1 + offset]),
                                              _block_text(new[j1 + offset]))})
            continue
        if tag in ("delete", "replace"):
            ops.append({"op": "delete", "index": i1, "nodes": old[i1:i2]})
        if tag in ("insert", "replace"):
            ops.append({"op": "insert", "index": i1, "nodes": new[j1:j2]})
    return ops


def diff(before_state: bytes, after_state: bytes) -> dict[str, dict[str, Any]]:
    """The differences of two states' ``Y.Text`` and ``Y.XmlFragment`` roots:
    ``{"text": {root: [op…]}, "prosemirror": {root: [op…]}}``; unchanged roots left out."""
    before, after = contents(before_state), contents(after_state)
    out: dict[str, dict[str, Any]] = {"text": {}, "prosemirror": {}}
    for name in sorted(set(before["text"]) | set(after["text"])):
        ops = text_diff(before["text"].get(name, ""), after["text"].get(name, ""))
        if ops:
            out["text"][name] = ops
    empty: dict[str, Any] = {"type": "doc", "content": []}
    for name in sorted(set(before["prosemirror"]) | set(after["prosemirror"])):
        ops = prosemirror_diff(before["prosemirror"].get(name, empty),
                               after["prosemirror"].get(name, empty))
        if ops:
            out["prosemirror"][name] = ops
    return out
