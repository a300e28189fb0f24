"""The channel tables, as ordered migrations; the version reached is in
``captify_channels_schema`` (apart from the document store's ``captify_meta``).

Append a migration, never edit one."""

from __future__ import annotations

from typing import Final

VERSION_TABLE: Final = "captify_channels_schema"

SQLITE_MIGRATIONS: Final[list[list[str]]] = [
    # 1: notifications, per-user unread counters, durable channel state
    [
        "CREATE TABLE captify_notifications (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL, "
        "read_at INTEGER, dedupe_key TEXT)",
        "CREATE INDEX captify_notifications_by_user ON captify_notifications (user_id, id)",
        "CREATE UNIQUE INDEX captify_notifications_dedupe ON captify_notifications "
        "(user_id, dedupe_key) WHERE dedupe_key IS NOT NULL",
        "CREATE INDEX captify_notifications_unread ON captify_notifications (user_id) "
        "WHERE read_at IS NULL",
        "CREATE TABLE captify_notification_counters (user_id TEXT PRIMARY KEY, "
        "version INTEGER NOT NULL)",
        "CREATE TABLE captify_channel_states (channel TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "epoch TEXT NOT NULL, position INTEGER NOT NULL, updated_at REAL NOT NULL)",
    ],
]

POSTGRES_MIGRATIONS: Final[list[list[str]]] = [
    [
        "CREATE TABLE captify_notifications (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, payload JSONB NOT NULL, created_at BIGINT NOT NULL, "
        "read_at BIGINT, dedupe_key TEXT)",
        "CREATE INDEX captify_notifications_by_user ON captify_notifications (user_id, id DESC)",
        "CREATE UNIQUE INDEX captify_notifications_dedupe ON captify_notifications "
        "(user_id, dedupe_key) WHERE dedupe_key IS NOT NULL",
        "CREATE INDEX captify_notifications_unread ON captify_notifications (user_id) "
        "WHERE read_at IS NULL",
        "CREATE TABLE captify_notification_counters (user_id TEXT PRIMARY KEY, "
        "version BIGINT NOT NULL)",
        "CREATE TABLE captify_channel_states (channel TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "epoch TEXT NOT NULL, position BIGINT NOT NULL, "
        "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    ],
]
