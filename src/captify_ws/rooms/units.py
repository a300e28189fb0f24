"""Text positions and lengths: the one place where captify-ws converts between their units.

Who counts what:

==================================================  ==============================
ProseMirror positions (prosemirror-model in JS and
the ``prosemirror`` port: ``text_length``, steps)    UTF-16 code units
Yjs indices, lengths and clocks (``Y.Text``,
``Y.XmlText``, y-prosemirror, update encoding)      UTF-16 code units
pycrdt ``Text``/``XmlText`` ``insert``, ``del``,
``format``, ``len`` (yrs ``OffsetKind::Bytes``; no
setting for another in pycrdt 0.14)                  UTF-8 bytes
Python ``str`` indexing and ``len``                   code points
==================================================  ==============================

So ``"héllo"`` is 5 positions in ProseMirror and Yjs, 6 in pycrdt; ``"👷"`` is 2, 4 and 1.

Code that edits a pycrdt text computes *where* on Python strings (code points: an edit can
never fall between the two halves of a surrogate pair, which Yjs cannot represent) and calls
:func:`insert_text` and :func:`delete_text` with the text that precedes the edit, which turn
it into pycrdt's unit. Nothing else in captify-ws passes an index or a length to pycrdt text.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Text, XmlText


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units: ProseMirror's and Yjs's."""
    return len(text.encode("utf-16-le")) // 2


def pycrdt_length(text: str) -> int:
    """Length in pycrdt's unit (UTF-8 bytes)."""
    return len(text.encode("utf-8"))


def insert_text(ytext: Text | XmlText, before: str, value: str,
                attrs: dict[str, Any] | None = None) -> None:
    """Insert ``value`` into ``ytext`` right after its first ``len(before)`` characters
    (``before`` is that prefix of its content)."""
    ytext.insert(pycrdt_length(before), value, attrs)


def delete_text(ytext: Text | XmlText, before: str, removed: str) -> None:
    """Delete ``removed`` from ``ytext``, right after the prefix ``before``."""
    start = pycrdt_length(before)
    del ytext[start:start + pycrdt_length(removed)]
