"""The stored list of agent sessions (who co-edited a document, under which Yjs client id), so
``GET /api/v1/agent/sessions?document_id=`` answers the same after a restart and on every
instance sharing the store. The SQL is in ``sqlite_agents.py`` and ``postgres_agents.py``.

A record is written when a session starts and again when it changes (reverted, ended); times
are ms since the Unix epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: Sessions listed per document at most (the newest).
MAX_LISTED = 1000

COLUMNS = ("session_id, document_id, client_id, name, color, owner, run_id, instance, "
           "started_at, ended_at, reverted, before_version")


@dataclass(frozen=True, slots=True)
class AgentSessionRecord:
    """One agent session as stored and listed."""

    session_id: str
    document_id: str
    #: the Yjs client id every character it inserted carries
    client_id: int
    name: str
    color: str
    #: the principal (user id) the agent acts for, if given
    owner: str | None
    #: the agent run (``agent:{run_id}``) the session belongs to, if given
    run_id: str | None
    #: the instance holding the session (its HTTP calls go there)
    instance: str
    started_at: int
    ended_at: int | None = None
    reverted: bool = False
    #: the stored version holding the document as it was before the session
    before_version: int | None = None

    def row(self) -> tuple[Any, ...]:
        return dataclasses.astuple(self)

    @classmethod
    def from_row(cls, row: Any) -> AgentSessionRecord:
        (session_id, document_id, client_id, name, color, owner, run_id, instance, started_at,
         ended_at, reverted, before_version) = tuple(row)
        return cls(session_id, document_id, int(client_id), name, color, owner, run_id,
                   instance, int(started_at), None if ended_at is None else int(ended_at),
                   bool(reverted), None if before_version is None else int(before_version))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class AgentSessionStore(Protocol):
    """Agent sessions in a store (``memory``, ``sqlite``, ``postgres``)."""

    async def save_agent_session(self, record: AgentSessionRecord) -> None:
        """Insert or replace the record of ``record.session_id``; committed on return."""
        ...

    async def load_agent_session(self, session_id: str) -> AgentSessionRecord | None:
        """One session's record, or ``None``."""
        ...

    async def list_agent_sessions(self, document_id: str) -> list[AgentSessionRecord]:
        """The newest :data:`MAX_LISTED` sessions of a document, oldest first."""
        ...

    async def end_agent_sessions(self, instance: str | None, ended_at: int) -> int:
        """Mark the sessions still open on ``instance`` (every instance: ``None``) ended at
        ``ended_at`` — an instance that died without ending them; answers how many."""
        ...

    async def prune_agent_sessions(self, ended_before: int) -> int:
        """Delete the sessions that ended before ``ended_before`` (ms); answers how many."""
        ...


class MemoryAgentSessions:
    """``AgentSessionStore`` in a dict, mixed into ``MemoryStore`` (lost on exit)."""

    def __init__(self) -> None:
        self._agent_sessions: dict[str, AgentSessionRecord] = {}

    async def save_agent_session(self, record: AgentSessionRecord) -> None:
        self._agent_sessions[record.session_id] = record

    async def load_agent_session(self, session_id: str) -> AgentSessionRecord | None:
        return self._agent_sessions.get(session_id)

    async def list_agent_sessions(self, document_id: str) -> list[AgentSessionRecord]:
        mine = [r for r in self._agent_sessions.values() if r.document_id == document_id]
        return sorted(mine, key=lambda r: (r.started_at, r.session_id))[-MAX_LISTED:]

    async def end_agent_sessions(self, instance: str | None, ended_at: int) -> int:
        open_ = [r for r in self._agent_sessions.values() if r.ended_at is None
                 and (instance is None or r.instance == instance)]
        for record in open_:
            self._agent_sessions[record.session_id] = dataclasses.replace(
                record, ended_at=ended_at)
        return len(open_)

    async def prune_agent_sessions(self, ended_before: int) -> int:
        old = [key for key, r in self._agent_sessions.items()
               if r.ended_at is not None and r.ended_at < ended_before]
        for key in old:
            del self._agent_sessions[key]
        return len(old)
