"""The broadcast API for code running in the server's process (the seed's names, snake_case).

::

    from captify_ws import broadcast_steps, broadcast_steps_to_client, get_connection_count

    await broadcast_steps(document_id, steps, change_id)
    await broadcast_steps_to_client(document_id, client_id, steps, change_id)
    get_connection_count(document_id)      # or get_connection_count("fabric") per handler

These delegate to the server running in this process — the one piece of module-level state in
captify-ws. Backends in other processes or languages use the HTTP API instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captify_ws.errors import ServerNotRunning

if TYPE_CHECKING:
    from captify_ws.server import Server, StepsResult

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


def get_connection_count(key: str | None = None, *, document_id: str | None = None,
                         handler: str | None = None) -> int:
    """Connections on a document, or of a handler (``get_connection_count("fabric")``)."""
    return current_server().get_connection_count(key, document_id=document_id, handler=handler)
