"""The SQLite store's agent sessions (``store/agent_sessions.py``), mixed into ``SqliteStore``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from captify_ws.store.agent_sessions import COLUMNS, MAX_LISTED, AgentSessionRecord

T = TypeVar("T")


class SqliteAgentSessions:
    """``AgentSessionStore`` on the store's connection; needs ``_run`` and ``_write``."""

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    @staticmethod
    def _write(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        raise NotImplementedError

    async def save_agent_session(self, record: AgentSessionRecord) -> None:
        await self._run(self._write(lambda db: db.execute(
            f"INSERT OR REPLACE INTO captify_agent_sessions ({COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", record.row())))

    async def load_agent_session(self, session_id: str) -> AgentSessionRecord | None:
        def work(db: sqlite3.Connection) -> AgentSessionRecord | None:
            row = db.execute(f"SELECT {COLUMNS} FROM captify_agent_sessions "
                             "WHERE session_id = ?", (session_id,)).fetchone()
            return None if row is None else AgentSessionRecord.from_row(row)
        return await self._run(work)

    async def list_agent_sessions(self, document_id: str) -> list[AgentSessionRecord]:
        def work(db: sqlite3.Connection) -> list[AgentSessionRecord]:
            rows = db.execute(f"SELECT {COLUMNS} FROM captify_agent_sessions "
                              "WHERE document_id = ? ORDER BY started_at DESC, session_id DESC "
                              "LIMIT ?", (document_id, MAX_LISTED)).fetchall()
            return [AgentSessionRecord.from_row(row) for row in reversed(rows)]
        return await self._run(work)

    async def end_agent_sessions(self, instance: str | None, ended_at: int) -> int:
        return await self._run(self._write(lambda db: int(db.execute(
            "UPDATE captify_agent_sessions SET ended_at = ? WHERE ended_at IS NULL "
            "AND (? IS NULL OR instance = ?)", (ended_at, instance, instance)).rowcount)))

    async def prune_agent_sessions(self, ended_before: int) -> int:
        return await self._run(self._write(lambda db: int(db.execute(
            "DELETE FROM captify_agent_sessions WHERE ended_at < ?", (ended_before,)).rowcount)))
