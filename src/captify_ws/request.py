"""The HTTP request that opened a WebSocket (importable from ``captify_ws.connection`` too)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl


class UpgradeRequest:
    """The HTTP request that opened a WebSocket (or asked to).

    Headers are kept as the transport parsed them, or as one block of text
    (:func:`header_block`: memory per idle connection matters — one ``str`` instead of a
    multidict of two dozen); :meth:`header` looks one up case-insensitively.
    """

    __slots__ = ("_headers", "_query", "client", "path", "query_string")

    def __init__(self, path: str, query_string: str = "", headers: Any = (),
                 client: tuple[str, int] | None = None) -> None:
        self.path = path
        self.query_string = query_string
        #: a multidict with ``getall``, ``(name, value)`` pairs of str or bytes, or a
        #: :func:`header_block`
        self._headers = headers
        self.client = client
        self._query: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<UpgradeRequest {self.path}?{self.query_string}>"

    @property
    def query(self) -> Mapping[str, str]:
        """Query parameters (the first value of each)."""
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                self._query.setdefault(key, value)
        return self._query

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header as ``(lower-case name, value)``."""
        source = self._headers
        if isinstance(source, str):
            return [(name, value) for name, _, value in _block_lines(source)]
        pairs = source.items() if hasattr(source, "getall") else source
        return [(_text(name).lower(), _text(value)) for name, value in pairs]

    def header(self, name: str) -> str | None:
        """A header's value (repeated headers joined by ', '), or ``None``."""
        source = self._headers
        if isinstance(source, str):
            wanted = name.lower()
            values = [value for key, _, value in _block_lines(source) if key == wanted]
        elif hasattr(source, "getall"):
            values = [str(value) for value in source.getall(name, ())]
        else:
            wanted = name.lower()
            values = [_text(value) for key, value in source if _text(key).lower() == wanted]
        return ", ".join(values) if values else None


def header_block(pairs: Iterable[tuple[str, str]]) -> str:
    """``(name, value)`` pairs as one text, ``name:value`` lines with lower-case names (RFC 9110
    §5.5: a field value holds no CR or LF), for :class:`UpgradeRequest`."""
    return "\r\n".join(f"{name.lower()}:{value}" for name, value in pairs)


def _block_lines(block: str) -> Iterator[tuple[str, str, str]]:
    for line in block.split("\r\n"):
        if line:
            yield line.partition(":")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
