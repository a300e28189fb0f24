"""Document names: where a name comes from, how it is decoded, and which names are refused.

A document has one name, whatever route a client takes to it:

* the y-websocket URL ``/ws/fabric/<name>``: the path after the handler's path, exactly as the
  client sent it, **percent-decoded once** (RFC 3986 §2.1) and read as UTF-8. ``%2F`` and ``/``
  both give ``/``; ``%2520`` gives ``%20`` (the name), never a space. Both transports hand
  :func:`name_from_path` the raw path (the ASGI transport uses the scope's ``raw_path``), so
  they agree byte for byte;
* the JSON protocol's ``?documentId=`` (decoded once as any query parameter) and the
  ``documentId`` of its messages (JSON text, not decoded at all);
* the HTTP API's ``/api/v1/documents/<name>/…``: the path segment decoded once;
* the cluster's messages carry the decoded name as UTF-8, never re-encoded.

:func:`check_name` refuses, with a message saying why, the empty name, names longer than
:data:`MAX_NAME_CHARS` characters, and names with control characters or unpaired surrogates
(no store or broker could keep them). Any other string is a name: spaces, ``%``, ``/``, ``..``
and any Unicode are kept as they are.
"""

from __future__ import annotations

import unicodedata
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from captify_ws.errors import BadRequest

#: Longest document name, in characters (Python ``str`` code points).
MAX_NAME_CHARS: Final = 512

#: Characters a path may carry unencoded (RFC 3986 ``pchar`` and ``/``), for re-encoding a
#: path that an ASGI server handed over already decoded.
_PATH_SAFE: Final = "/!$&'()*+,;=:@-._~"


def check_name(name: str) -> str:
    """``name`` if it can name a document; raises :class:`~captify_ws.errors.BadRequest`
    (close 4400, HTTP 400) saying what is wrong otherwise."""
    if not name:
        raise BadRequest("empty document name: connect to /ws/fabric/<name> or "
                         "/ws/fabric?documentId=<name>")
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"document name is {len(name)} characters long; the limit is "
                         f"{MAX_NAME_CHARS}")
    for char in name:
        category = unicodedata.category(char)
        if category == "Cc":
            raise BadRequest(f"document name holds the control character U+{ord(char):04X}")
        if category == "Cs":
            raise BadRequest("document name holds an unpaired UTF-16 surrogate "
                             f"U+{ord(char):04X}")
    return name


def name_from_path(raw: str) -> str:
    """The document name in a raw URL path (percent-encoded, each character standing for one
    byte, as transports read request lines: latin-1), decoded exactly once and checked."""
    if raw.isascii() and "%" not in raw:
        return check_name(raw)  # nothing to decode: the same string (memory per connection)
    try:
        name = unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadRequest("document name is not UTF-8 once percent-decoded") from None
    return check_name(name)


def encode_path(decoded: str) -> str:
    """A decoded path made raw again (for ASGI servers that give no ``raw_path``): decoding it
    once with :func:`name_from_path` gives ``decoded`` back."""
    return quote(decoded, safe=_PATH_SAFE, encoding="utf-8", errors="surrogatepass")
