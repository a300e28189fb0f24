"""Document stores: the protocol, and ``open_store(url)`` to pick one by URL."""

from __future__ import annotations

from captify_ws.errors import ConfigError
from captify_ws.plugins import is_import_path, load_plugin
from captify_ws.store.base import DocumentStore, StoredDocument
from captify_ws.store.memory import MemoryStore

__all__ = ["DocumentStore", "MemoryStore", "StoredDocument", "store_from_url"]


def store_from_url(url: str, settings: object = None) -> DocumentStore:
    """The store a URL names: ``memory``, ``sqlite:///path.db``, ``postgresql://…``, or your
    own as ``module:attribute`` (see ``plugins.py``; made from ``settings``)."""
    if is_import_path(url):
        store: DocumentStore = load_plugin(url, "store", DocumentStore, settings)  # type: ignore[assignment]
        return store
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite:"):
        from captify_ws.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from captify_ws.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"unknown store {url!r}: use 'memory', 'sqlite:///path/to/file.db' or "
                      "'postgresql://user@host/db', or 'module:attribute'")
