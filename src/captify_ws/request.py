"""The HTTP request that opened a WebSocket (importable from ``captify_ws.connection`` too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl


class UpgradeRequest:
    """The HTTP request that opened a WebSocket (or asked to).

    Headers are kept as the transport parsed them (never copied: memory per idle connection
    matters); :meth:`header` looks one up case-insensitively.
    """

    __slots__ = ("_headers", "_query", "client", "path", "query_string")

    def __init__(self, path: str, query_string: str = "", headers: Any = (),
                 client: tuple[str, int] | None = None) -> None:
        self.path = path
        self.query_string = query_string
        #: a multidict with ``getall`` (picows), or ``(name, value)`` pairs of str or bytes
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
        pairs = source.items() if hasattr(source, "getall") else source
        return [(_text(name).lower(), _text(value)) for name, value in pairs]

    def header(self, name: str) -> str | None:
        """A header's value (repeated headers joined by ', '), or ``None``."""
        source = self._headers
        if hasattr(source, "getall"):
            values = [str(value) for value in source.getall(name, ())]
        else:
            wanted = name.lower()
            values = [_text(value) for key, value in source if _text(key).lower() == wanted]
        return ", ".join(values) if values else None


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
