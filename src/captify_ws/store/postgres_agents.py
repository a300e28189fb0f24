"""The PostgreSQL store's agent sessions (``store/agent_sessions.py``), mixed into
``PostgresStore``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from captify_ws.store.agent_sessions import COLUMNS, MAX_LISTED, AgentSessionRecord

_UPSERT = (f"INSERT INTO captify_agent_sessions ({COLUMNS}) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
           "ON CONFLICT (session_id) DO UPDATE SET ended_at = EXCLUDED.ended_at, "
           "reverted = EXCLUDED.reverted, before_version = EXCLUDED.before_version, "
           "instance = EXCLUDED.instance")


class PostgresAgentSessions:
    """``AgentSessionStore`` on the store's pool; needs ``_in_transaction``."""

    async def _in_transaction(self, work: Callable[[Any], Awaitable[Any]], *,
                              write: bool = False) -> Any:
        raise NotImplementedError

    async def save_agent_session(self, record: AgentSessionRecord) -> None:
        await self._in_transaction(lambda conn: conn.execute(_UPSERT, *record.row()),
                                   write=True)

    async def load_agent_session(self, session_id: str) -> AgentSessionRecord | None:
        row = await self._in_transaction(lambda conn: conn.fetchrow(
            f"SELECT {COLUMNS} FROM captify_agent_sessions WHERE session_id = $1", session_id))
        return None if row is None else AgentSessionRecord.from_row(row)

    async def list_agent_sessions(self, document_id: str) -> list[AgentSessionRecord]:
        rows = await self._in_transaction(lambda conn: conn.fetch(
            f"SELECT {COLUMNS} FROM captify_agent_sessions WHERE document_id = $1 "
            "ORDER BY started_at DESC, session_id DESC LIMIT $2", document_id, MAX_LISTED))
        return [AgentSessionRecord.from_row(row) for row in reversed(rows)]

    async def end_agent_sessions(self, instance: str | None, ended_at: int) -> int:
        status = await self._in_transaction(lambda conn: conn.execute(
            "UPDATE captify_agent_sessions SET ended_at = $1 WHERE ended_at IS NULL "
            "AND ($2::text IS NULL OR instance = $2)", ended_at, instance), write=True)
        return int(str(status).rsplit(" ", 1)[-1])

    async def prune_agent_sessions(self, ended_before: int) -> int:
        status = await self._in_transaction(lambda conn: conn.execute(
            "DELETE FROM captify_agent_sessions WHERE ended_at < $1", ended_before), write=True)
        return int(str(status).rsplit(" ", 1)[-1])
