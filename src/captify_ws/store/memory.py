"""The in-memory store: for tests and throwaway runs.

What it cannot do: keep anything past the process, or share documents between processes. Use
``sqlite`` (the default) or ``postgres`` for anything that matters.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence

from captify_ws.store.agent_sessions import MemoryAgentSessions
from captify_ws.store.base import (
    APPENDED,
    CONFLICT,
    DUPLICATE,
    StepLog,
    StepRecord,
    StoredDocument,
    merge_into_snapshot,
)
from captify_ws.store.history import (
    MAX_PAGE,
    FeedEntry,
    FeedKind,
    Version,
    VersionInfo,
    VersionKind,
    decode_who,
    doomed_versions,
    merge_who,
    updates_per_document,
    who_labels,
)
from captify_ws.store.memory_webhooks import MemoryWebhooks


class MemoryStore(MemoryWebhooks, MemoryAgentSessions):
    """Documents in a dict. Every guarantee of ``DocumentStore`` holds within one process."""

    url = "memory"

    def __init__(self) -> None:
        MemoryWebhooks.__init__(self)
        MemoryAgentSessions.__init__(self)
        self._snapshots: dict[str, bytes | None] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._pm: dict[str, tuple[int, str]] = {}
        self._changes: dict[str, dict[str, int]] = {}
        self._feed: list[FeedEntry] = []
        self._feed_cursor = 0
        self._feed_first = 0
        self._versions: dict[str, dict[int, Version]] = {}
        self._revocations: dict[tuple[str, str], tuple[str, float]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def load(self, document_id: str) -> StoredDocument | None:
        if document_id not in self._logs:
            return None
        return StoredDocument(self._snapshots.get(document_id), list(self._logs[document_id]))

    async def append_updates(self, entries: Sequence[tuple[str, bytes]],
                             who: Mapping[str, Collection[str]] | None = None) -> None:
        created = {document_id for document_id, _ in entries if document_id not in self._logs}
        for document_id, update in entries:
            self._logs.setdefault(document_id, []).append(update)
        # the feed rows' authors as labels: nothing is stored, so nothing is encoded as JSON
        for document_id, count in updates_per_document(entries).items():
            self._append_feed(document_id, "created" if document_id in created else "changed",
                              count, who_labels(set((who or {}).get(document_id, ()))))

    def _append_feed(self, document_id: str, kind: FeedKind, updates: int,
                     who: tuple[str, ...], version: int | None = None) -> FeedEntry:
        self._feed_cursor += 1
        cursor = self._feed_cursor
        entry = FeedEntry(cursor, document_id, kind, time.time(), updates, who, version)
        self._feed.append(entry)
        return entry

    async def compact(self, document_id: str) -> int:
        log = self._logs.get(document_id)
        if not log:
            return 0
        merged = len(log)
        self._snapshots[document_id] = merge_into_snapshot(self._snapshots.get(document_id), log)
        self._logs[document_id] = []
        return merged

    async def list_documents(self) -> list[str]:
        return sorted(self._logs)

    def forget(self, document_id: str) -> None:
        """Nothing to drop: the documents themselves are this store's memory."""

    async def save_revocation(self, document_id: str, user_id: str, access: str,
                              expires_at: float) -> None:
        """In this process only: a restart forgets it (use SQLite or PostgreSQL)."""
        now = time.time()
        self._revocations = {key: value for key, value in self._revocations.items()
                             if value[1] > now}
        self._revocations[(document_id, user_id)] = (access, expires_at)

    async def load_revocations(self) -> list[tuple[str, str, str, float]]:
        now = time.time()
        return [(doc, user, access, expires) for (doc, user), (access, expires)
                in self._revocations.items() if expires > now]

    async def delete_document(self, document_id: str) -> bool:
        self._snapshots.pop(document_id, None)
        existed = self._logs.pop(document_id, None) is not None
        existed = self._steps.pop(document_id, None) is not None or existed
        self._pm.pop(document_id, None)
        self._changes.pop(document_id, None)
        self._versions.pop(document_id, None)
        if existed:
            self._append_feed(document_id, "deleted", 0, ())
        return existed

    # -- history (store/history.py) -------------------------------------------------------

    async def read_feed(self, since: int, limit: int) -> list[FeedEntry]:
        return [entry for entry in self._feed if entry.cursor > since][:min(limit, MAX_PAGE)]

    async def last_cursor(self) -> int:
        return self._feed_cursor

    async def first_cursor(self) -> int:
        return self._feed_first

    async def prune_feed(self, before: float, keep_after: int | None) -> int:
        kept: list[FeedEntry] = []
        gone: list[FeedEntry] = []
        for entry in self._feed:
            keep = entry.at >= before or (keep_after is not None and entry.cursor > keep_after)
            (kept if keep else gone).append(entry)
        self._feed_first = max([self._feed_first] + [entry.cursor for entry in gone])
        self._feed = kept
        return len(gone)

    async def add_version(self, document_id: str, state: bytes, kind: VersionKind,
                          name: str | None, *, only_if_changed: bool = False,
                          who: Sequence[str] = (),
                          clients: Mapping[int, str] | None = None) -> VersionInfo | None:
        versions = self._versions.setdefault(document_id, {})
        previous = versions[max(versions)].info if versions else None
        since = previous.cursor if previous is not None else 0
        authors = [merge_who([], entry.who) for entry in self._feed
                   if entry.cursor > since and entry.document_id == document_id
                   and entry.kind in ("created", "changed")]
        if only_if_changed and not authors:
            return None
        number = previous.number + 1 if previous is not None else 1
        entry = self._append_feed(document_id, "version", 0, decode_who(merge_who([], who)),
                                  number)
        info = VersionInfo(document_id, number, kind, name, entry.at,
                           decode_who(merge_who(authors, who)), entry.cursor, len(state),
                           dict(clients or {}))
        versions[number] = Version(info, state)
        return info

    async def list_versions(self, document_id: str, before: int | None,
                            limit: int) -> list[VersionInfo]:
        versions = self._versions.get(document_id, {})
        return [versions[number].info for number in sorted(versions, reverse=True)
                if before is None or number < before][:min(limit, MAX_PAGE)]

    async def get_version(self, document_id: str, number: int) -> Version | None:
        return self._versions.get(document_id, {}).get(number)

    async def prune_versions(self, document_id: str, keep: int, older_than: float) -> int:
        versions = self._versions.get(document_id, {})
        autos = [(number, versions[number].info.at) for number in sorted(versions, reverse=True)
                 if versions[number].info.kind == "auto"]
        doomed = doomed_versions(autos, keep, older_than)
        for number in doomed:
            del versions[number]
        return len(doomed)

    async def load_steps(self, document_id: str, since: int = 0) -> StepLog:
        steps = self._steps.get(document_id, {})
        return StepLog(self._pm.get(document_id),
                       [steps[v] for v in sorted(steps) if v >= since])

    async def append_steps(self, document_id: str, version: int, steps: Sequence[str],
                           client_id: str, change_id: str | None = None) -> str:
        if change_id is not None and change_id in self._changes.get(document_id, {}):
            return DUPLICATE
        log = self._steps.setdefault(document_id, {})
        if any(version + offset in log for offset in range(len(steps))):
            return CONFLICT
        for offset, step in enumerate(steps):
            log[version + offset] = StepRecord(version + offset, step, client_id)
        if change_id is not None:
            self._changes.setdefault(document_id, {})[change_id] = version
        return APPENDED

    async def find_change(self, document_id: str, change_id: str) -> int | None:
        return self._changes.get(document_id, {}).get(change_id)

    async def save_step_snapshot(self, document_id: str, version: int, doc: str,
                                 keep_steps: int) -> None:
        self._pm[document_id] = (version, doc)
        log = self._steps.get(document_id, {})
        for old in [v for v in log if v < version - keep_steps]:
            del log[old]
