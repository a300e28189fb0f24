"""The agent sessions of one instance: the attribution list, and the sessions opened over
HTTP (for producers in other languages), each closed — its presence gone — when it has been
idle for ``agent_producer_ttl_s`` (its producer died: a TTL, not a ghost).

A session opened over HTTP is alive while a request of it is in flight (a streaming insert
counts) and for ``agent_producer_ttl_s`` after the last one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from captify_ws.agents.session import AgentSession, SessionInfo
from captify_ws.errors import ChannelError, CloseCode

if TYPE_CHECKING:
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.agents")

#: Sessions remembered per instance for the attribution list (the oldest go first).
MAX_LISTED = 10_000
#: Sessions open over HTTP at once on one instance.
MAX_OPEN = 1000


@dataclass
class _Open:
    session: AgentSession
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AgentSessions:
    """See the module docstring."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ttl_s = server.settings.agent_producer_ttl_s
        self.sessions: deque[SessionInfo] = deque(maxlen=MAX_LISTED)
        self.open: dict[str, _Open] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def list(self, document_id: str) -> list[dict[str, Any]]:
        """The sessions of a document, oldest first."""
        return [info.to_json() for info in self.sessions if info.document_id == document_id]

    # -- HTTP sessions ---------------------------------------------------------------------

    async def start_session(self, document_id: str, *, name: str, color: str,
                            field: str = "text") -> AgentSession:
        if len(self.open) >= MAX_OPEN:
            raise ChannelError(CloseCode.RATE_LIMITED, f"more than {MAX_OPEN} agent sessions "
                               "open on this instance")
        session = AgentSession(self.server, document_id, name=name, color=color, field=field,
                               registry=self)
        session.info.session_id = secrets.token_urlsafe(12)
        await session.__aenter__()
        self.open[session.info.session_id] = _Open(session)
        return session

    @contextlib.asynccontextmanager
    async def use(self, session_id: str) -> AsyncIterator[AgentSession]:
        """An open session, one request at a time; ``ChannelError(4400)`` if unknown or
        expired."""
        entry = self.open.get(session_id)
        if entry is None:
            raise ChannelError(CloseCode.BAD_REQUEST, f"unknown agent session {session_id!r} "
                               f"(ended, or idle for more than {self.ttl_s:g} s)")
        entry.in_flight += 1
        try:
            async with entry.lock:
                yield entry.session
        finally:
            entry.in_flight -= 1
            entry.last_used = time.monotonic()

    def touch(self, session_id: str) -> None:
        entry = self.open.get(session_id)
        if entry is not None:
            entry.last_used = time.monotonic()

    async def end(self, session_id: str) -> bool:
        entry = self.open.pop(session_id, None)
        if entry is None:
            return False
        await entry.session.close()
        return True

    # -- the TTL ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """End the HTTP sessions idle for longer than the TTL; answers how many."""
        now = time.monotonic()
        idle = [sid for sid, entry in self.open.items()
                if entry.in_flight == 0 and now - entry.last_used > self.ttl_s]
        for session_id in idle:
            logger.info("agent session %s ended: idle for more than %g s", session_id,
                        self.ttl_s)
            await self.end(session_id)
        return len(idle)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="captify-agent-sessions")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for session_id in list(self.open):
            with contextlib.suppress(Exception):
                await self.end(session_id)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.ttl_s / 4))
            try:
                await self.sweep()
            except Exception:
                logger.exception("agent session sweep failed")
