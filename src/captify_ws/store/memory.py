"""The in-memory store: for tests and throwaway runs.

What it cannot do: keep anything past the process, or share documents between processes. Use
``sqlite`` (the default) or ``postgres`` for anything that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

from captify_ws.store.base import (
    APPENDED,
    CONFLICT,
    DUPLICATE,
    StepLog,
    StepRecord,
    StoredDocument,
    merge_into_snapshot,
)


class MemoryStore:
    """Documents in a dict. Every guarantee of ``DocumentStore`` holds within one process."""

    url = "memory"

    def __init__(self) -> None:
        self._snapshots: dict[str, bytes | None] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._pm: dict[str, tuple[int, str]] = {}
        self._changes: dict[str, dict[str, int]] = {}

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
        existed = self._logs.pop(document_id, None) is not None
        existed = self._steps.pop(document_id, None) is not None or existed
        self._pm.pop(document_id, None)
        self._changes.pop(document_id, None)
        return existed

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
