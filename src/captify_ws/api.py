"""The broadcast API for code running in the server's process (the seed's names, snake_case).

::

    from captify_ws import broadcast_steps, broadcast_steps_to_client, get_connection_count

    await broadcast_steps(document_id, steps, change_id)
    await broadcast_steps_to_client(document_id, client_id, steps, change_id)
    get_connection_count(document_id)      # or get_connection_count("fabric") per handler

Channels (``/ws/notifications``, ``/ws/workflow``)::

    from captify_ws import publish, notify_user, is_online

    position = await publish("workflow:run-7", "step.status", {"step": "ocr", "status": "done"},
                             state_patch={"ocr": "done"}, idempotency_key="run-7:ocr:done")
    await notify_user("u-42", "comment", {"text": "Nice!"}, dedupe_key="comment-981")
    await is_online("u-42")

These delegate to the server running in this process — the one piece of module-level state in
captify-ws. Backends in other processes or languages use the HTTP API, or Redis
(``captify_ws.client.Publisher``, the ingest stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captify_ws.errors import ServerNotRunning

if TYPE_CHECKING:
    from collections.abc import Mapping

    from captify_ws.agents.producer import AgentRun, OnCancel
    from captify_ws.agents.registry import AgentSessions
    from captify_ws.agents.runs import AgentRuns
    from captify_ws.agents.session import AgentSession
    from captify_ws.channels.types import Position, Published
    from captify_ws.channelstore.base import Notification
    from captify_ws.handlers.notifications import Mailbox
    from captify_ws.rooms.steps import StepsResult
    from captify_ws.server import Server

_current: Server | None = None


def set_current_server(server: Server) -> None:
    global _current  # noqa: PLW0603 - the one documented "current server"
    _current = server


def clear_current_server(server: Server) -> None:
    global _current  # noqa: PLW0603
    if _current is server:
        _current = None


def current_server() -> Server:
    """The server running in this process; raises :class:`ServerNotRunning` if none."""
    if _current is None:
        raise ServerNotRunning("no captify-ws server is running in this process "
                               "(start one with `captify-ws serve` or create_app())")
    return _current


async def broadcast_steps(document_id: str, steps: list[Any], change_id: Any,
                          version: int | None = None) -> StepsResult:
    """Apply ProseMirror steps to ``document_id`` through its step authority and send them to
    every client (and to its Yjs editors). Idempotent on ``change_id``."""
    return await current_server().broadcast_steps(document_id, steps, change_id, version)


async def broadcast_steps_to_client(document_id: str, client_id: str, steps: list[Any],
                                    change_id: Any) -> int:
    """Send ProseMirror steps to the clients of ``document_id`` with this ``clientID`` only."""
    return await current_server().broadcast_steps_to_client(document_id, client_id, steps,
                                                             change_id)


async def apply_update(document_id: str, update: bytes) -> None:
    """Apply a Yjs update to a document as the server; stored before this returns."""
    await current_server().apply_update(document_id, update)


async def get_document(document_id: str) -> bytes | None:
    """The document as one Yjs update (``None`` if it does not exist)."""
    return await current_server().get_document(document_id)


async def revoke(document_id: str, user_id: str, to: str = "none") -> int:
    """Take a user's access to a document away (``"none"``) or down to ``"read"``, on every
    instance; their connections close with 4403 or turn read-only at once."""
    return await current_server().revoke(document_id, user_id, to)


def broadcast_stateless(document_id: str, payload: str) -> int:
    """A stateless message to every Hocuspocus provider of ``document_id``, on every instance
    (their ``onStateless``); returns how many got it on this instance."""
    return current_server().stateless.broadcast(document_id, payload)


def send_stateless(document_id: str, payload: str, *, user_id: str | None = None,
                   connection_id: str | None = None) -> int:
    """A stateless message to the Hocuspocus providers of ``document_id`` of one user, or on
    one connection, on every instance; returns how many got it on this instance."""
    return current_server().stateless.send(document_id, payload, user_id=user_id,
                                           connection_id=connection_id)


def request_token(document_id: str, user_id: str | None = None) -> int:
    """Ask the Hocuspocus providers of ``document_id`` (of one user, or all) for a fresh token,
    on every instance; their access is checked again with it."""
    return current_server().request_token(document_id, user_id)


def get_connection_count(key: str | None = None, *, document_id: str | None = None,
                         handler: str | None = None) -> int:
    """Connections on a document, or of a handler (``get_connection_count("fabric")``)."""
    return current_server().get_connection_count(key, document_id=document_id, handler=handler)


# -- channels ----------------------------------------------------------------------------------


async def publish(channel: str, event: str, data: Any = None, *,
                  state_patch: Mapping[str, Any] | None = None,
                  idempotency_key: str | None = None, ephemeral: bool = False) -> Published:
    """Publish ``event`` with ``data`` on ``channel`` (``class:name``); returns its
    ``Position(offset, epoch)`` (a :class:`~captify_ws.channels.types.Published`).

    ``state_patch`` is merged into the channel's state atomically with the append (a numeric
    ``version`` in it drops the publication unless it is above the state's: ``stale``). The
    same ``idempotency_key`` within ``channel_idempotency_window_s`` answers the first
    position and is not delivered again (``duplicate``). ``ephemeral`` publications have no
    offset, are never stored nor replayed (progress ticks) and answer ``Position(0, "")``.
    Raises :class:`~captify_ws.errors.ChannelError` (4400 unknown class or bad arguments, 1009
    past ``channel_publication_max_bytes``) and :class:`~captify_ws.errors.BrokerError` when
    the backend (Redis) cannot be reached — then nothing was published."""
    return await current_server().channel_services.hub.publish(
        channel, event, data, state_patch=state_patch, idempotency_key=idempotency_key,
        ephemeral=ephemeral)


async def channel_position(channel: str) -> Position:
    """A channel's current ``Position(offset, epoch)`` — read it *before* loading the data a
    page shows, then subscribe with it as ``since``: nothing falls in between."""
    read = await current_server().channel_services.hub.read(channel, 0, 0)
    return read.position


def mailbox(server: Server) -> Mailbox:
    """The notifications handler's mailbox of ``server``."""
    handler = server.registry.by_name("notifications")
    found = getattr(handler, "mailbox", None)
    if found is None:
        raise ServerNotRunning("the notifications handler is not registered")
    return found  # type: ignore[no-any-return]


async def notify_user(user_id: str, kind: str, payload: Any, *,
                      dedupe_key: str | None = None) -> Notification:
    """Store a notification for ``user_id`` (SQLite/PostgreSQL), then push
    ``notification.created`` to every tab of that user. A ``dedupe_key`` the user already has
    stores nothing new (retries are safe). See ``handlers/notifications.py``."""
    return await mailbox(current_server()).notify_user(user_id, kind, payload,
                                                       dedupe_key=dedupe_key)


async def is_online(user_id: str) -> bool:
    """Whether ``user_id`` has a ``/ws/notifications`` connection on any instance."""
    return await current_server().channel_services.online.count(user_id) > 0


# -- agents ------------------------------------------------------------------------------------


def agent_runs(server: Server) -> AgentRuns:
    """The ``/ws/agent`` handler's runs of ``server``."""
    handler = server.registry.by_name("agent")
    found = getattr(handler, "runs", None)
    if found is None:
        raise ServerNotRunning("the agent handler is not registered")
    return found  # type: ignore[no-any-return]


def agent_sessions(server: Server) -> AgentSessions:
    """The ``/ws/agent`` handler's agent sessions of ``server``."""
    handler = server.registry.by_name("agent")
    found = getattr(handler, "sessions", None)
    if found is None:
        raise ServerNotRunning("the agent handler is not registered")
    return found  # type: ignore[no-any-return]


def agent_run(run_id: str, owner: str | None = None, *, on_cancel: OnCancel | None = None,
              metadata: dict[str, Any] | None = None) -> AgentRun:
    """The producer of agent run ``run_id`` (channel ``agent:{run_id}``), an async context
    manager: ``async with agent_run("run-42", owner="u-7") as run: await run.token("m1",
    "Hel")``. Entering publishes ``run.started`` (``owner`` may subscribe and cancel);
    leaving publishes ``run.completed`` (``run.failed`` on an exception). A client's cancel
    calls ``on_cancel``, else cancels the task in the block. Tokens are coalesced
    (``agent_coalesce_ms``, ``agent_coalesce_tokens``). See ``agents/producer.py``."""
    from captify_ws.agents.producer import AgentRun

    return AgentRun(agent_runs(current_server()), run_id, owner=owner, on_cancel=on_cancel,
                    metadata=metadata)


async def cancel_run(run_id: str, by: str | None = None) -> str:
    """Cancel agent run ``run_id`` as the server; answers its final status."""
    return await agent_runs(current_server()).cancel(run_id, by)


def agent_session(document_id: str, *, name: str = "Assistant", color: str = "#7c3aed",
                  field: str = "text", chunk_chars: int = 16, owner: str | None = None,
                  run_id: str | None = None) -> AgentSession:
    """An agent co-editing ``document_id`` like a person (presence, its own Yjs client id,
    edits at relative positions, ``revert()``), an async context manager; ``owner`` (the
    principal it acts for) and ``run_id`` (its ``agent:{run_id}`` run) go into the stored
    attribution list (entering raises ``StoreError``, nothing left open, when the store cannot
    record the session). See ``agents/session.py``."""
    from captify_ws.agents.session import AgentSession

    server = current_server()
    return AgentSession(server, document_id, name=name, color=color, field=field,
                        chunk_chars=chunk_chars, owner=owner, run_id=run_id,
                        registry=agent_sessions(server))
