"""The ProseMirror schema of Tiptap 3's StarterKit, built in as ``--pm-schema tiptap``.

Tiptap names its nodes and marks in camelCase (``bulletList``, ``listItem``, ``bold``…), so
the default schema (prosemirror-schema-basic: ``bullet_list``, ``strong``) cannot represent what
a Tiptap editor writes to its ``Y.XmlFragment``. This is the schema that
``getSchema([StarterKit])`` of ``@tiptap/core`` 3.31.3 builds: the same node and mark names in
the same order (the order decides the default block and how marks sort), the same content
expressions, groups and attributes with their defaults. Only what the step authority needs is
here (no parse/render rules). tests/test_tiptap_schema.py compares it with ``getSchema``'s
output so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from prosemirror.model import Schema
from prosemirror.model.schema import AttributeSpec, MarkSpec, NodeSpec

#: the name that selects this schema in the ``pm_schema`` setting
NAME = "tiptap"


def _attrs(**defaults: Any) -> dict[str, AttributeSpec]:
    return {name: {"default": value} for name, value in defaults.items()}


def tiptap_schema() -> Schema[Any, Any]:
    """Tiptap 3 StarterKit's schema (``@tiptap/starter-kit`` 3.31.3, ``getSchema``).

    Nodes: doc, paragraph, blockquote, bulletList, codeBlock{language}, hardBreak,
    heading{level}, horizontalRule, listItem, orderedList{start,type}, text. Marks: link{href,
    target,rel,class,title}, bold, code, italic, strike, underline.
    """
    nodes: dict[str, NodeSpec] = {
        "paragraph": {"content": "inline*", "group": "block"},
        "blockquote": {"content": "block+", "group": "block", "defining": True},
        "bulletList": {"content": "listItem+", "group": "block list"},
        "codeBlock": {"content": "text*", "group": "block", "marks": "", "code": True,
                      "defining": True, "attrs": _attrs(language=None)},
        "doc": {"content": "block+"},
        "hardBreak": {"group": "inline", "inline": True, "selectable": False},
        "heading": {"content": "inline*", "group": "block", "defining": True,
                    "attrs": _attrs(level=1)},
        "horizontalRule": {"group": "block"},
        "listItem": {"content": "paragraph block*", "defining": True},
        "orderedList": {"content": "listItem+", "group": "block list",
                        "attrs": _attrs(start=1, type=None)},
        "text": {"group": "inline"},
    }
    marks: dict[str, MarkSpec] = {
        "link": {"inclusive": True, "attrs": _attrs(
            href=None, target="_blank", rel="noopener noreferrer nofollow", **{"class": None},
            title=None)},
        "bold": {},
        "code": {"excludes": "_", "code": True},
        "italic": {},
        "strike": {},
        "underline": {},
    }
    return Schema({"nodes": nodes, "marks": marks, "topNode": "doc"})
