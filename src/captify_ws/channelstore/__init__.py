"""The SQL side of channels: users' notification mailboxes and the durable state of channels.

Kept apart from the document store (``store/``) with its own schema version
(``captify_channels_schema``), in the same SQLite file or PostgreSQL database as the documents:
the two evolve independently and never renumber each other's migrations.
"""

from __future__ import annotations

from captify_ws.channelstore.base import ChannelStore, Notification, UnreadCount
from captify_ws.channelstore.memory import MemoryChannelStore
from captify_ws.errors import ConfigError
from captify_ws.plugins import is_import_path

__all__ = ["ChannelStore", "MemoryChannelStore", "Notification", "UnreadCount",
           "channel_store_from_url"]


def channel_store_from_url(url: str) -> ChannelStore:
    """The channel store beside the document store ``url`` names (same file or database).
    With a document store of your own (``module:attribute``), channels are kept in memory
    (this process only)."""
    if url == "memory" or is_import_path(url):
        return MemoryChannelStore()
    if url.startswith("sqlite:"):
        from captify_ws.channelstore.sqlite import SqliteChannelStore

        return SqliteChannelStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from captify_ws.channelstore.postgres import PostgresChannelStore

        return PostgresChannelStore(url)
    raise ConfigError(f"unknown store {url!r}: use 'memory', 'sqlite:///path/to/file.db' or "
                      "'postgresql://user@host/db'")
