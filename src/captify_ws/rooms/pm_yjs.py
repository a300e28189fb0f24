"""ProseMirror documents ↔ the Y.XmlFragment that y-prosemirror (and Tiptap) edit.

The mapping is y-prosemirror's, so that editors bound with ``ySyncPlugin`` see exactly what
the server writes:

* a node is a ``Y.XmlElement`` named after its node type, with its non-null attributes as XML
  attributes;
* a run of adjacent text nodes is one ``Y.XmlText``; each mark is a formatting attribute
  named after the mark type (``name--<hash>`` for marks a node may carry several times), whose
  value is the mark's attrs.

:func:`update_fragment` changes the fragment as little as it can: unchanged children at both
ends are kept, children whose type matches are updated in place (text by its changed middle
only), and only what differs is deleted and inserted. Edits that editors make concurrently to
other parts of the document are therefore kept by Yjs. Text positions are converted to
pycrdt's unit in ``rooms/units.py``.

:func:`fragment_to_node` refuses (``schema_mismatch``) a fragment holding node types, marks
or attributes the schema does not have, or content the schema does not allow, instead of
dropping them: writing the server's document back would otherwise delete them for everyone.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Sequence
from typing import Any, cast

from prosemirror.model import Mark, Node, Schema
from pycrdt import XmlElement, XmlFragment, XmlText

from captify_ws.rooms.steps import StepsRefused, schema_mismatch
from captify_ws.rooms.units import delete_text, insert_text

_HASHED_MARK = re.compile(r"(.*)(--[a-zA-Z0-9+/=]{8})$")

Run = tuple[str, dict[str, Any]]


def _attributes(element: XmlElement) -> dict[str, Any]:
    # pycrdt types __iter__ as Iterable; at run time it yields (key, value) pairs.
    return dict(cast(Any, element.attributes))


def mark_name(attribute: str) -> str:
    """The mark type named by a formatting attribute (``comment--AbCd1234`` → ``comment``)."""
    match = _HASHED_MARK.match(attribute)
    return match.group(1) if match else attribute


def _write_uint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def _encode_any(out: bytearray, value: Any) -> None:
    """lib0 ``encoding.writeAny`` (what y-prosemirror hashes)."""
    if value is None:
        out.append(126)
    elif value is True or value is False:
        out.append(120 if value else 121)
    elif isinstance(value, int) and abs(value) <= 0x7FFFFFFF:
        out.append(125)
        magnitude = abs(value)
        out.append((0x80 if magnitude > 0x3F else 0) | (0x40 if value < 0 else 0)
                   | (magnitude & 0x3F))
        magnitude >>= 6
        while magnitude:
            out.append((0x80 if magnitude > 0x7F else 0) | (magnitude & 0x7F))
            magnitude >>= 7
    elif isinstance(value, (int, float)):
        number = float(value)
        single = struct.pack(">f", number) if abs(number) < 3.5e38 else b""
        if single and struct.unpack(">f", single)[0] == number:
            out.append(124)
            out += single
        else:
            out.append(123)
            out += struct.pack(">d", number)
    elif isinstance(value, str):
        out.append(119)
        data = value.encode("utf-8")
        _write_uint(out, len(data))
        out += data
    elif isinstance(value, dict):
        out.append(118)
        _write_uint(out, len(value))
        for key, item in value.items():
            data = str(key).encode("utf-8")
            _write_uint(out, len(data))
            out += data
            _encode_any(out, item)
    elif isinstance(value, (list, tuple)):
        out.append(117)
        _write_uint(out, len(value))
        for item in value:
            _encode_any(out, item)
    else:
        out.append(127)


def mark_hash(mark_json: dict[str, Any]) -> str:
    """y-prosemirror's ``hashOfJSON``: SHA-256 of the lib0 encoding, folded to 6 bytes,
    base64."""
    encoded = bytearray()
    _encode_any(encoded, mark_json)
    digest = bytearray(hashlib.sha256(bytes(encoded)).digest())
    for index in range(6, len(digest)):
        digest[index % 6] ^= digest[index]
    return base64.b64encode(bytes(digest[:6])).decode()


def _mark_key(mark: Mark) -> str:
    # As y-prosemirror's marksToAttributes: a mark that may be set several times on one text
    # (it does not exclude itself) is keyed by its name and a hash of its JSON.
    if mark.type.excludes(mark.type):
        return mark.type.name
    return f"{mark.type.name}--{mark_hash(dict(mark.to_json()))}"


def fragment_to_json(fragment: XmlFragment | XmlElement) -> dict[str, Any]:
    """The ProseMirror JSON of a fragment (what y-prosemirror's
    ``yXmlFragmentToProsemirrorJSON`` returns)."""
    return {"type": "doc", "content": [item for child in fragment.children
                                       for item in _child_json(child)]}


def _child_json(child: Any) -> list[dict[str, Any]]:
    if isinstance(child, XmlText):
        out = []
        for text, attrs in child.diff():
            if not isinstance(text, str) or not text:
                continue
            node: dict[str, Any] = {"type": "text", "text": text}
            if attrs:
                node["marks"] = [{"type": mark_name(key), "attrs": value or {}}
                                 for key, value in attrs.items() if value is not None]
            out.append(node)
        return out
    if isinstance(child, XmlElement):
        node = {"type": child.tag}
        attrs = _attributes(child)
        if attrs:
            node["attrs"] = attrs
        content = [item for grandchild in child.children for item in _child_json(grandchild)]
        if content:
            node["content"] = content
        return [node]
    return []


def _misfits(schema: Schema[Any, Any], node: dict[str, Any], nodes: set[str],
             marks: set[str], attrs: set[str]) -> None:
    """Collect what in a ProseMirror JSON tree the schema has no place for."""
    name = node.get("type")
    node_type = schema.nodes.get(name) if isinstance(name, str) else None
    if node_type is None:
        nodes.add(str(name))
    else:
        attrs.update(f"{name}.{key}" for key in node.get("attrs") or {}
                     if key not in node_type.attrs)
    for mark in node.get("marks") or ():
        mark_type = schema.marks.get(mark.get("type"))
        if mark_type is None:
            marks.add(str(mark.get("type")))
        else:
            attrs.update(f"{mark_type.name}.{key}" for key in mark.get("attrs") or {}
                         if key not in mark_type.attrs)
    for child in node.get("content") or ():
        _misfits(schema, child, nodes, marks, attrs)


def fragment_to_node(schema: Schema[Any, Any], fragment: XmlFragment) -> Node:
    """The fragment as a ProseMirror document; an empty fragment is the schema's empty doc.

    Raises :class:`~captify_ws.rooms.steps.StepsRefused` (``schema_mismatch``) naming the
    node types, marks and attributes the schema does not have, or the node whose content the
    schema does not allow: nothing the Yjs editors hold is ever dropped silently.
    """
    if len(fragment.children) == 0:
        node = schema.top_node_type.create_and_fill()
        assert node is not None
        return node
    tree = fragment_to_json(fragment)
    nodes: set[str] = set()
    marks: set[str] = set()
    attrs: set[str] = set()
    _misfits(schema, tree, nodes, marks, attrs)
    if nodes or marks or attrs:
        raise schema_mismatch("the Yjs editors' document has", nodes, marks, attrs)
    try:
        doc = Node.from_json(schema, tree)
        doc.check()
    except (ValueError, KeyError, TypeError) as exc:
        raise StepsRefused(f"the Yjs editors' document does not fit the document's schema "
                           f"(--pm-schema): {exc}", "schema_mismatch") from None
    return doc


# -- ProseMirror → Yjs ------------------------------------------------------------------------


def _normalized(node: Node) -> list[Node | list[Node]]:
    """A node's children, adjacent text nodes grouped (one Y.XmlText per group)."""
    out: list[Node | list[Node]] = []
    for child in node.content.content:
        if child.is_text:
            if out and isinstance(out[-1], list):
                out[-1].append(child)
            else:
                out.append([child])
        else:
            out.append(child)
    return out


def _runs(texts: Sequence[Node]) -> list[Run]:
    return [(text.text or "", {_mark_key(mark): dict(mark.attrs) for mark in text.marks})
            for text in texts]


def _attrs(node: Node) -> dict[str, Any]:
    return {key: value for key, value in node.attrs.items()
            if value is not None and key != "ychange"}


def _text_runs(ytext: XmlText) -> list[Run]:
    return [(text, {key: value for key, value in (attrs or {}).items() if value is not None})
            for text, attrs in ytext.diff() if isinstance(text, str) and text]


def _same(ychild: Any, pchild: Node | list[Node]) -> bool:
    if isinstance(pchild, list):
        return isinstance(ychild, XmlText) and _text_runs(ychild) == _runs(pchild)
    if not isinstance(ychild, XmlElement) or ychild.tag != pchild.type.name:
        return False
    if _attributes(ychild) != _attrs(pchild):
        return False
    ychildren = list(ychild.children)
    pchildren = _normalized(pchild)
    return len(ychildren) == len(pchildren) and all(
        _same(y, p) for y, p in zip(ychildren, pchildren, strict=True))


def _build(pchild: Node | list[Node]) -> XmlElement | XmlText:
    if isinstance(pchild, list):
        return XmlText()
    return XmlElement(pchild.type.name, _attrs(pchild))


def _fill(ychild: XmlElement | XmlText, pchild: Node | list[Node]) -> None:
    """Give a freshly inserted (integrated) type its content."""
    if isinstance(pchild, list):
        assert isinstance(ychild, XmlText)
        before = ""
        for text, attrs in _runs(pchild):
            insert_text(ychild, before, text, attrs or None)
            before += text
        return
    assert isinstance(ychild, XmlElement)
    for index, grandchild in enumerate(_normalized(pchild)):
        _fill(ychild.children.insert(index, _build(grandchild)), grandchild)


def _update_text(ytext: XmlText, runs: list[Run]) -> None:
    """Replace only the changed middle of a text (characters with their formatting).

    The middle is found on code points (never between the halves of a surrogate pair);
    ``rooms/units.py`` turns it into pycrdt's positions.
    """
    old = [(char, attrs) for text, attrs in _text_runs(ytext) for char in text]
    new = [(char, attrs) for text, attrs in runs for char in text]
    start = 0
    while start < len(old) and start < len(new) and old[start] == new[start]:
        start += 1
    end = 0
    while end < len(old) - start and end < len(new) - start and \
            old[len(old) - 1 - end] == new[len(new) - 1 - end]:
        end += 1
    before = "".join(char for char, _ in old[:start])
    if len(old) - end > start:
        delete_text(ytext, before, "".join(char for char, _ in old[start:len(old) - end]))
    keys = {key for _, attrs in old for key in attrs} | {key for _, attrs in new for key in attrs}
    inserted = new[start:len(new) - end]
    index = 0
    while index < len(inserted):
        # One insert per run of equal formatting, with explicit attributes (None unsets):
        # Yjs would otherwise give the inserted text the formatting of the text before it.
        attrs = inserted[index][1]
        stop = index + 1
        while stop < len(inserted) and inserted[stop][1] == attrs:
            stop += 1
        value = "".join(char for char, _ in inserted[index:stop])
        insert_text(ytext, before, value, {key: attrs.get(key) for key in keys})
        before += value
        index = stop


def update_fragment(fragment: XmlFragment | XmlElement, node: Node) -> None:
    """Make ``fragment`` hold ``node``'s content, changing as little as possible.

    Call inside a transaction of the fragment's document.
    """
    if isinstance(fragment, XmlElement):
        wanted = _attrs(node)
        current = _attributes(fragment)
        for key, value in wanted.items():
            if current.get(key) != value:
                fragment.attributes[key] = value
        for key in current:
            if key not in wanted:
                del fragment.attributes[key]
    pchildren = _normalized(node)
    ychildren = list(fragment.children)
    left = 0
    while left < min(len(pchildren), len(ychildren)) and _same(ychildren[left],
                                                               pchildren[left]):
        left += 1
    right = 0
    while right < min(len(pchildren), len(ychildren)) - left and \
            _same(ychildren[len(ychildren) - 1 - right], pchildren[len(pchildren) - 1 - right]):
        right += 1
    middle_y = ychildren[left:len(ychildren) - right]
    middle_p = pchildren[left:len(pchildren) - right]
    index = left
    # Update in place where the kinds match, pairwise; replace the rest.
    paired = 0
    for ychild, pchild in zip(middle_y, middle_p, strict=False):
        if isinstance(pchild, list) and isinstance(ychild, XmlText):
            _update_text(ychild, _runs(pchild))
        elif isinstance(pchild, Node) and isinstance(ychild, XmlElement) and \
                ychild.tag == pchild.type.name:
            update_fragment(ychild, pchild)
        else:
            break
        paired += 1
        index += 1
    stale = len(middle_y) - paired
    if stale:
        del fragment.children[index:index + stale]
    for offset, pchild in enumerate(middle_p[paired:]):
        _fill(fragment.children.insert(index + offset, _build(pchild)), pchild)
