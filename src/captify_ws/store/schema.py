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
    # 2: the ProseMirror step authority: its log, snapshots, and applied change ids
    [
        "CREATE TABLE captify_steps (document_id TEXT NOT NULL, version INTEGER NOT NULL, "
        "step TEXT NOT NULL, client_id TEXT NOT NULL, PRIMARY KEY (document_id, version))",
        "CREATE TABLE captify_pm_snapshots (document_id TEXT PRIMARY KEY, "
        "version INTEGER NOT NULL, doc TEXT NOT NULL)",
        "CREATE TABLE captify_changes (document_id TEXT NOT NULL, change_id TEXT NOT NULL, "
        "version INTEGER NOT NULL, PRIMARY KEY (document_id, change_id))",
    ],
    # 3: documents get an integer key and the update log refers to it (a TEXT key in every log
    # row and index entry cost 40% more per insert); no AUTOINCREMENT either (its
    # sqlite_sequence bookkeeping): new rows still get the highest rowid, so the log keeps
    # its order.
    [
        "CREATE TABLE captify_documents_v3 (num INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "snapshot BLOB, created_at REAL NOT NULL, updated_at REAL NOT NULL)",
        "INSERT INTO captify_documents_v3 (id, snapshot, created_at, updated_at) "
        "SELECT id, snapshot, created_at, updated_at FROM captify_documents",
        "CREATE TABLE captify_updates_v3 (seq INTEGER PRIMARY KEY, doc INTEGER NOT NULL, "
        "data BLOB NOT NULL)",
        "INSERT INTO captify_updates_v3 (seq, doc, data) SELECT u.seq, d.num, u.data "
        "FROM captify_updates u JOIN captify_documents_v3 d ON d.id = u.document_id",
        "DROP TABLE captify_updates",
        "DROP TABLE captify_documents",
        "ALTER TABLE captify_documents_v3 RENAME TO captify_documents",
        "ALTER TABLE captify_updates_v3 RENAME TO captify_updates",
        "CREATE INDEX captify_updates_by_doc ON captify_updates (doc, seq)",
    ],
    # 4: history (store/history.py): the change feed (AUTOINCREMENT: a cursor is never
    # reused, even after the newest rows were deleted) and versions
    [
        "CREATE TABLE captify_feed (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "document_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL, "
        "updates INTEGER NOT NULL, who TEXT NOT NULL, version INTEGER)",
        "CREATE INDEX captify_feed_by_document ON captify_feed (document_id, seq)",
        "CREATE TABLE captify_versions (document_id TEXT NOT NULL, number INTEGER NOT NULL, "
        "kind TEXT NOT NULL, name TEXT, at REAL NOT NULL, who TEXT NOT NULL, "
        "seq INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (document_id, number))",
    ],
    # 5: the webhook outbox (store/webhooks.py); its feed cursor is in captify_meta
    [
        "CREATE TABLE captify_webhook_deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "event_id TEXT NOT NULL, endpoint TEXT NOT NULL, document_id TEXT NOT NULL, "
        "event TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, "
        "attempts INTEGER NOT NULL, created_at REAL NOT NULL, next_at REAL NOT NULL, "
        "last_status INTEGER NOT NULL, last_error TEXT, delivered_at REAL, "
        "lease_until REAL NOT NULL DEFAULT 0)",
        "CREATE INDEX captify_webhook_order ON captify_webhook_deliveries "
        "(status, endpoint, document_id, id)",
    ],
    # 6: revocations (Server.revoke), kept until they expire
    [
        "CREATE TABLE captify_revocations (document_id TEXT NOT NULL, user_id TEXT NOT NULL, "
        "access TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (document_id, user_id))",
    ],
    # 7: versions name the Yjs clients whose updates went in, for attribution in diffs
    [
        "ALTER TABLE captify_versions ADD COLUMN clients TEXT NOT NULL DEFAULT '{}'",
    ],
    # 8: agent sessions (store/agent_sessions.py): who co-edited a document as which client
    [
        "CREATE TABLE captify_agent_sessions (session_id TEXT PRIMARY KEY, "
        "document_id TEXT NOT NULL, client_id INTEGER NOT NULL, name TEXT NOT NULL, "
        "color TEXT NOT NULL, owner TEXT, run_id TEXT, instance TEXT NOT NULL, "
        "started_at INTEGER NOT NULL, ended_at INTEGER, reverted INTEGER NOT NULL, "
        "before_version INTEGER)",
        "CREATE INDEX captify_agent_sessions_by_document ON captify_agent_sessions "
        "(document_id, started_at)",
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
    [
        "CREATE TABLE captify_steps (document_id TEXT NOT NULL, version BIGINT NOT NULL, "
        "step TEXT NOT NULL, client_id TEXT NOT NULL, PRIMARY KEY (document_id, version))",
        "CREATE TABLE captify_pm_snapshots (document_id TEXT PRIMARY KEY, "
        "version BIGINT NOT NULL, doc TEXT NOT NULL)",
        "CREATE TABLE captify_changes (document_id TEXT NOT NULL, change_id TEXT NOT NULL, "
        "version BIGINT NOT NULL, PRIMARY KEY (document_id, change_id))",
    ],
    # 3: history (store/history.py): the change feed, numbered under an advisory lock in
    # commit order, and versions
    [
        "CREATE TABLE captify_feed (seq BIGSERIAL PRIMARY KEY, document_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, updates INTEGER NOT NULL, "
        "who TEXT NOT NULL, version INTEGER)",
        "CREATE INDEX captify_feed_by_document ON captify_feed (document_id, seq)",
        "CREATE TABLE captify_versions (document_id TEXT NOT NULL, number INTEGER NOT NULL, "
        "kind TEXT NOT NULL, name TEXT, at DOUBLE PRECISION NOT NULL, who TEXT NOT NULL, "
        "seq BIGINT NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (document_id, number))",
    ],
    # 4: the webhook outbox (store/webhooks.py) and its feed cursor
    [
        "CREATE TABLE captify_webhook_deliveries (id BIGSERIAL PRIMARY KEY, "
        "event_id TEXT NOT NULL, endpoint TEXT NOT NULL, document_id TEXT NOT NULL, "
        "event TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, "
        "attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
        "next_at DOUBLE PRECISION NOT NULL, last_status INTEGER NOT NULL, last_error TEXT, "
        "delivered_at DOUBLE PRECISION, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0)",
        "CREATE INDEX captify_webhook_order ON captify_webhook_deliveries "
        "(status, endpoint, document_id, id)",
        "CREATE TABLE captify_webhook_cursor (cursor BIGINT NOT NULL)",
        "INSERT INTO captify_webhook_cursor VALUES (0)",
    ],
    # 5: revocations (Server.revoke), kept until they expire
    [
        "CREATE TABLE captify_revocations (document_id TEXT NOT NULL, user_id TEXT NOT NULL, "
        "access TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (document_id, user_id))",
    ],
    # 6: versions name the Yjs clients whose updates went in, for attribution in diffs
    [
        "ALTER TABLE captify_versions ADD COLUMN clients TEXT NOT NULL DEFAULT '{}'",
    ],
    # 7: agent sessions (store/agent_sessions.py): who co-edited a document as which client
    [
        "CREATE TABLE captify_agent_sessions (session_id TEXT PRIMARY KEY, "
        "document_id TEXT NOT NULL, client_id BIGINT NOT NULL, name TEXT NOT NULL, "
        "color TEXT NOT NULL, owner TEXT, run_id TEXT, instance TEXT NOT NULL, "
        "started_at BIGINT NOT NULL, ended_at BIGINT, reverted BOOLEAN NOT NULL, "
        "before_version INTEGER)",
        "CREATE INDEX captify_agent_sessions_by_document ON captify_agent_sessions "
        "(document_id, started_at)",
    ],
]
