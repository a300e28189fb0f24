"""The in-memory store: for tests and throwaway runs.

What it cannot do: keep anything past the process, or share documents between processes. Use
``sqlite`` (the default) or ``postgres`` for anything that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

from captify_ws.store.base import StoredDocument, merge_into_snapshot


class MemoryStore:
    """Documents in a dict. Every guarantee of ``DocumentStore`` holds within one process."""

    url = "memory"

    def __init__(self) -> None:
        self._snapshots: dict[str, bytes | None] = {}
        self._logs: dict[str, list[bytes]] = {}

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

    async def append_updates(self, entries: Sequence[tuple[str, bytes]]) -> None:
        for document_id, update in entries:
            self._logs.setdefault(document_id, []).append(update)

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

    async def delete_document(self, document_id: str) -> bool:
        self._snapshots.pop(document_id, None)
        return self._logs.pop(document_id, None) is not None
