"""The agent sessions of one instance: the attribution list (kept in the document store,
``store/agent_sessions.py``, so every instance and a restarted one list the same), and the
sessions opened over HTTP (for producers in other languages), each closed — its presence gone —
when it has been idle for ``agent_producer_ttl_s`` (its producer died: a TTL, not a ghost).

A session opened over HTTP is alive while a request of it is in flight (a streaming insert
counts) and for ``agent_producer_ttl_s`` after the last one ended. It lives on the instance
that opened it (its Yjs replica and presence are there): another instance sharing the store
answers its calls with :class:`SessionElsewhere` (HTTP 421) naming that instance; once that
instance has left the cluster (killed), its open sessions are marked ended in the store by the
first instance that lists them or is asked for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from captify_ws.agents.session import AgentSession, SessionInfo
from captify_ws.errors import CaptifyError, ChannelError, CloseCode
from captify_ws.store.agent_sessions import (
    AgentSessionRecord,
    AgentSessionStore,
    MemoryAgentSessions,
)

if TYPE_CHECKING:
    from captify_ws.agents.host import AgentHost

logger = logging.getLogger("captify_ws.agents")

#: Sessions open over HTTP at once on one instance, and for one owner.
MAX_OPEN = 1000
MAX_OPEN_PER_OWNER = 100
#: Seconds between deletions of old session records (``history_log_keep_s``).
PRUNE_EVERY_S = 3600.0


class SessionElsewhere(CaptifyError):
    """An HTTP call for a session open on another instance (HTTP 421, Misdirected Request):
    send a session's calls to the instance that started it (session affinity)."""

    def __init__(self, record: AgentSessionRecord, alive: bool) -> None:
        super().__init__(f"agent session {record.session_id!r} is open on instance "
                         f"{record.instance!r}" + ("" if alive else
                                                   ", which is no longer in the cluster"))
        self.record = record
        self.alive = alive


@dataclass
class _Open:
    session: AgentSession
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AgentSessions:
    """See the module docstring."""

    def __init__(self, server: AgentHost) -> None:
        self.server = server
        self.ttl_s = server.settings.agent_producer_ttl_s
        store = server.store
        #: where the attribution list is kept (a store without it: this process's memory)
        self.store: AgentSessionStore = store if isinstance(store, AgentSessionStore) \
            else MemoryAgentSessions()
        self.open: dict[str, _Open] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    async def list(self, document_id: str) -> list[dict[str, Any]]:
        """The sessions of a document, oldest first (the newest 1,000); raises
        ``StoreError``."""
        records = await self.store.list_agent_sessions(document_id)
        gone = {r.instance for r in records if r.ended_at is None and self._gone(r.instance)}
        if gone:
            for instance in gone:
                await self._end_instance(instance)
            records = await self.store.list_agent_sessions(document_id)
        return [record.to_json() for record in records]

    def _gone(self, instance: str) -> bool:
        """Whether ``instance`` surely left the cluster: this instance has been in it for
        four heartbeats with a working broker and did not hear from it for three."""
        cluster = self.server.cluster
        if cluster is None or instance == self.server.instance_id or \
                cluster.broker.error is not None:
            return False
        settled = time.monotonic() - self._started > \
            4 * self.server.settings.cluster_heartbeat_s
        return settled and instance not in cluster.instances

    async def _end_instance(self, instance: str) -> None:
        ended = await self.store.end_agent_sessions(instance, int(time.time() * 1000))
        logger.info("%d agent sessions of instance %s, which left the cluster, marked ended",
                    ended, instance)

    async def record(self, info: SessionInfo) -> None:
        """Store a session's record as it is now; raises ``StoreError``."""
        await self.store.save_agent_session(AgentSessionRecord(
            info.session_id, info.document_id, info.client_id, info.name, info.color,
            info.owner, info.run_id, self.server.instance_id, info.started_at, info.ended_at,
            info.reverted, info.before_version))

    # -- HTTP sessions ---------------------------------------------------------------------

    async def start_session(self, document_id: str, *, name: str, color: str,
                            field: str = "text", owner: str | None = None,
                            run_id: str | None = None) -> AgentSession:
        if len(self.open) >= MAX_OPEN:
            raise ChannelError(CloseCode.RATE_LIMITED, f"more than {MAX_OPEN} agent sessions "
                               "open on this instance")
        if owner is not None and sum(entry.session.info.owner == owner
                                     for entry in self.open.values()) >= MAX_OPEN_PER_OWNER:
            raise ChannelError(CloseCode.RATE_LIMITED, f"more than {MAX_OPEN_PER_OWNER} agent "
                               f"sessions of {owner!r} open on this instance")
        session = AgentSession(self.server, document_id, name=name, color=color, field=field,
                               owner=owner, run_id=run_id, registry=self)
        session.info.session_id = secrets.token_urlsafe(12)
        await session.__aenter__()
        self.open[session.info.session_id] = _Open(session)
        return session

    @contextlib.asynccontextmanager
    async def use(self, session_id: str) -> AsyncIterator[AgentSession]:
        """An open session, one request at a time; ``ChannelError(4404)`` if unknown or
        expired."""
        entry = self.open.get(session_id)
        if entry is None:
            await self._elsewhere(session_id)
            raise ChannelError(CloseCode.NOT_FOUND, f"unknown agent session {session_id!r} "
                               f"(ended, or idle for more than {self.ttl_s:g} s)")
        entry.in_flight += 1
        try:
            async with entry.lock:
                yield entry.session
        finally:
            entry.in_flight -= 1
            entry.last_used = time.monotonic()

    async def _elsewhere(self, session_id: str) -> None:
        """Raise :class:`SessionElsewhere` if the store has the session open on another
        instance."""
        record = await self.store.load_agent_session(session_id)
        if record is None or record.ended_at is not None \
                or record.instance == self.server.instance_id:
            return
        if self._gone(record.instance):
            await self._end_instance(record.instance)
            raise ChannelError(CloseCode.NOT_FOUND, f"unknown agent session {session_id!r} "
                               f"(its instance {record.instance} left the cluster)")
        cluster = self.server.cluster
        alive = cluster is not None and record.instance in cluster.instances
        raise SessionElsewhere(record, alive)

    def touch(self, session_id: str) -> None:
        entry = self.open.get(session_id)
        if entry is not None:
            entry.last_used = time.monotonic()

    async def end(self, session_id: str) -> bool:
        entry = self.open.pop(session_id, None)
        if entry is None:
            await self._elsewhere(session_id)
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
        self._started = time.monotonic()
        if self.server.cluster is None:
            # One instance: sessions a previous process left open (kill -9) are over.
            try:
                ended = await self.store.end_agent_sessions(None, int(time.time() * 1000))
            except CaptifyError as exc:
                logger.warning("agent sessions of a previous process not ended: %s", exc)
            else:
                if ended:
                    logger.info("%d agent sessions of a previous process marked ended", ended)
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
            try:
                await self.end(session_id)
            except Exception as exc:  # the store is away: the session expires by its TTL
                logger.warning("agent session %s not ended at stop: %s", session_id, exc)

    async def prune(self) -> int:
        """Delete the records of sessions ended more than ``history_log_keep_s`` ago (0: kept
        for ever); answers how many. Raises ``StoreError``."""
        keep_s = self.server.settings.history_log_keep_s
        if keep_s <= 0:
            return 0
        return await self.store.prune_agent_sessions(int((time.time() - keep_s) * 1000))

    async def _sweep_forever(self) -> None:
        pruned_at = 0.0
        while True:
            await asyncio.sleep(min(5.0, self.ttl_s / 4))
            try:
                await self.sweep()
                if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    await self.prune()
            except Exception:
                logger.exception("agent session sweep failed")
