"""``/ws/agent``: AI agent runs streamed to any number of tabs, surviving reloads, stopped only
by a cancel.

Channels ``agent:{run_id}`` on the channel core (same protocol, recovery and authorization as
``/ws/workflow``). The events and the compacted snapshot are in
:mod:`captify_ws.agents.events`; a tab that subscribes late, or reloads after more than
``agent_recovery_max_publications`` publications, gets the snapshot (text so far per message,
tool calls, status) and then live events. The terminal event is stored once and seals the
run, so no late reader or lost frame leaves a run looking alive.

Requests beside ``subscribe``/``unsubscribe``::

    {"type":"cancel","id":5,"channel":"agent:run-42"}   → {"type":"reply","id":5,
                                                           "data":{"status":"cancelled"}}

A cancel is the only way to stop a run: a closing tab or a reload never stops it. Who may:
the run's owner (``owner`` of ``run.started``) subscribes and cancels; anyone else as the
configured authorizer says for the channel name (``read`` subscribes, ``write`` also cancels;
``jwt-claims``: ``"docs": {"agent:*": "read"}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from captify_ws.agents.events import CLASS, run_id_of
from captify_ws.agents.host import AgentHost
from captify_ws.agents.registry import AgentSessions
from captify_ws.agents.runs import AgentRuns
from captify_ws.channels.endpoint import ChannelEndpoint, ChannelSession
from captify_ws.channels.types import ChannelClass
from captify_ws.errors import ChannelError, CloseCode, Reject
from captify_ws.protocol import channels as wire

if TYPE_CHECKING:
    from captify_ws.channels.services import ChannelServices


class AgentHandlerHost(AgentHost, Protocol):
    """What ``/ws/agent`` asks of the server: the agents' host and the channel core."""

    @property
    def channel_services(self) -> ChannelServices: ...


class AgentHandler(ChannelEndpoint):
    """See the module docstring."""

    def __init__(self, server: AgentHandlerHost) -> None:
        services = server.channel_services
        self.runs = AgentRuns(services)
        #: agents co-editing documents (the attribution list)
        self.sessions = AgentSessions(server)
        services.parts.append(self.sessions)
        services.parts.append(self.runs)
        super().__init__(services, "/ws/agent", "agent", [self.runs.klass],
                         commands={"cancel": self._cancel})

    async def _is_owner(self, session: ChannelSession, channel: str) -> bool:
        user = session.user_id
        if user is None:
            return False
        state = await self.runs.state(run_id_of(channel))
        return state.get("owner") == user

    async def authorize(self, session: ChannelSession, klass: ChannelClass,
                        channel: str) -> None:
        if await self._is_owner(session, channel):
            return
        await super().authorize(session, klass, channel)

    async def _cancel(self, session: ChannelSession, request: wire.Command) -> Any:
        channel = wire.check_channel(request.channel,
                                     self.services.settings.channel_name_max_bytes)
        if wire.channel_class(channel) != CLASS:
            raise ChannelError(CloseCode.BAD_REQUEST, f"cancel takes an agent run's channel "
                               f"('agent:<run_id>'), not {channel!r}")
        if not await self._is_owner(session, channel):
            try:
                access = await self.services.authorize(session.conn, channel)
            except Reject as exc:
                raise ChannelError(CloseCode.FORBIDDEN, f"cancel of {channel!r} denied: "
                                   f"{exc.reason}") from None
            if access != "write":
                raise ChannelError(CloseCode.FORBIDDEN, f"cancel of {channel!r} denied: read "
                                   "access only")
        status = await self.runs.cancel(run_id_of(channel), session.user_id)
        return {"status": status}
