"""Stateless messages (Hocuspocus): strings beside a document that change nothing in it.

* A provider's ``sendStateless(payload)`` reaches every hook named by ``--stateless-hooks``
  (``module:attribute``, comma-separated), called with one :class:`StatelessEvent`; a hook may be
  a plain function or a coroutine function, and may answer with ``event.reply(payload)``.
  A connection's stateless messages are handled one at a time, in order.
* Server code sends them with :meth:`StatelessHub.broadcast` (every Hocuspocus provider of a
  document) and :meth:`StatelessHub.send` (those of one user, or one connection), on every
  instance: the message crosses the broker once and each instance delivers it to its own
  providers. Backends reach the same through the HTTP API and the Redis publish contract.

Only Hocuspocus providers receive stateless messages: y-websocket and the JSON protocol have
no such message. What broadcast does not guarantee: delivery to a provider that is not
connected at that moment (stateless messages are not stored).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import log_with_id
from captify_ws.imports import import_attribute
from captify_ws.protocol.hocuspocus import FrameEncoder

if TYPE_CHECKING:
    from captify_ws.config import Settings
    from captify_ws.rooms.manager import RoomManager
    from captify_ws.rooms.member import Member

logger = logging.getLogger("captify_ws.stateless")


@dataclass(frozen=True, slots=True)
class StatelessEvent:
    """A provider sent ``payload`` about ``document_id``.

    ``user_id`` is who the document authenticated as (``None`` when anonymous); ``connection``
    is the socket (``connection.id``, ``connection.request``); ``address`` is the document's
    address on that socket (the name, or ``name\\0sessionId``).
    """

    document_id: str
    payload: str
    user_id: str | None
    connection: Connection
    address: str

    def reply(self, payload: str) -> None:
        """A stateless message back to the provider that sent this one."""
        self.connection.send_frame(PreparedFrame.binary(
            FrameEncoder(self.address).stateless(payload)))


StatelessHook = Callable[[StatelessEvent], Awaitable[None] | None]


def member_user(member: Member) -> str | None:
    """The user a member authenticated as."""
    principal = member.principal or member.connection.principal
    user: str | None = getattr(principal, "user_id", None)
    return user


class StatelessPublisher(Protocol):
    """Carries stateless messages to the other instances (the cluster bridge)."""

    def publish_stateless(self, document_id: str, payload: str, user_id: str | None,
                          connection_id: str | None) -> None: ...


class StatelessHost(Protocol):
    """What the hub reads of the server it belongs to (the ``Server`` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def rooms(self) -> RoomManager: ...

    @property
    def cluster(self) -> StatelessPublisher | None: ...


class StatelessHub:
    """Hooks for providers' stateless messages, and the server's own; one per server."""

    def __init__(self, server: StatelessHost,
                 hooks: Iterable[StatelessHook] = ()) -> None:
        self._server = server
        self.hooks: list[StatelessHook] = [
            import_attribute(spec, "stateless hook") for spec in server.settings.stateless_hooks]
        self.hooks.extend(hooks)

    async def dispatch(self, event: StatelessEvent) -> None:
        """Run every hook on ``event``; a failing hook is logged and the others still run."""
        for hook in self.hooks:
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log_with_id(logger, f"stateless hook {hook!r} failed on {event.document_id!r}",
                            exc)

    def broadcast(self, document_id: str, payload: str) -> int:
        """``payload`` to every Hocuspocus provider of ``document_id``, on every instance;
        returns how many got it here."""
        return self._send(document_id, payload, None, None)

    def send(self, document_id: str, payload: str, *, user_id: str | None = None,
             connection_id: str | None = None) -> int:
        """``payload`` to the providers of ``document_id`` of one user (``user_id``) or on one
        connection (``connection_id``, as in :attr:`StatelessEvent.connection`), on every
        instance; returns how many got it here."""
        if (user_id is None) == (connection_id is None):
            raise ValueError("pass exactly one of user_id and connection_id")
        return self._send(document_id, payload, user_id, connection_id)

    def _send(self, document_id: str, payload: str, user_id: str | None,
              connection_id: str | None) -> int:
        _check_payload(payload)
        cluster = self._server.cluster
        if cluster is not None:
            cluster.publish_stateless(document_id, payload, user_id, connection_id)
        return self.deliver(document_id, payload, user_id, connection_id)

    def deliver(self, document_id: str, payload: str, user_id: str | None = None,
                connection_id: str | None = None) -> int:
        """Send to the matching providers of this instance only (the broker's deliveries)."""
        room = self._server.rooms.get(document_id)
        if room is None or not room.hocuspocus:
            return 0
        where: Callable[[Member], bool] | None = None
        if user_id is not None:
            where = lambda member: member_user(member) == user_id  # noqa: E731
        elif connection_id is not None:
            where = lambda member: member.connection.id == connection_id  # noqa: E731
        return room.hocuspocus.broadcast_stateless(payload, where)


def _check_payload(payload: Any) -> None:
    if not isinstance(payload, str):
        raise TypeError("a stateless payload is a string (JSON.stringify / json.dumps it)")
