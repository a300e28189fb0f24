"""The stores' schemas, as ordered migrations. The version reached is kept in ``captify_meta``.

A new migration is appended, never edited: a store created by an older captify-ws is brought up
to date on start, and a store newer than this code is refused with a clear error.
"""

from __future__ import annotations

from typing import Final

SQLITE_MIGRATIONS: Final[list[list[str]]] = [
    # 1: documents with a snapshot, and their update log
    [
        "CREATE TABLE captify_documents (id TEXT PRIMARY KEY, snapshot BLOB, "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL)",
        "CREATE TABLE captify_updates (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "document_id TEXT NOT NULL, data BLOB NOT NULL)",
        "CREATE INDEX captify_updates_by_document ON captify_updates (document_id, seq)",
    ],
]

POSTGRES_MIGRATIONS: Final[list[list[str]]] = [
    [
        "CREATE TABLE captify_documents (id TEXT PRIMARY KEY, snapshot BYTEA, "
        "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
        "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE TABLE captify_updates (seq BIGSERIAL PRIMARY KEY, document_id TEXT NOT NULL, "
        "data BYTEA NOT NULL)",
        "CREATE INDEX captify_updates_by_document ON captify_updates (document_id, seq)",
    ],
]
