"""Who is in a room and where a change came from: :class:`Member` and :class:`Origin`.

A :class:`Member` is one connection's membership in a
:class:`~captify_ws.rooms.document.DocumentRoom` (on a Hocuspocus socket, one per document it
multiplexes). Every change to a room is tagged with an :class:`Origin` (a member, the server
API, the broker, the store), so that listeners can tell what to store and what to publish, and
nothing is echoed back to where it came from (STYLE.md, habit 6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from captify_ws.connection import Connection
from captify_ws.errors import CloseCode

if TYPE_CHECKING:
    from captify_ws.rooms.document import DocumentRoom

Wire = Literal["yws", "json", "hocuspocus"]


class Member:
    """A connection's membership in a room."""

    __slots__ = ("access", "address", "client_id", "connection", "principal", "room",
                 "told_read_only", "wire")

    def __init__(self, connection: Connection, client_id: str, wire: Wire, *,
                 access: Literal["read", "write"] = "write", address: str | None = None,
                 principal: Any = None) -> None:
        self.connection = connection
        self.client_id = client_id
        self.wire: Wire = wire
        self.room: DocumentRoom | None = None
        #: "write", or "read" for a read-only member (its edits are refused)
        self.access: Literal["read", "write"] = access
        self.told_read_only = False
        #: on a socket that carries many documents, the address of this one (Hocuspocus)
        self.address = address
        #: who this member is when it authenticated apart from its connection (Hocuspocus
        #: authenticates each document); ``None``: the connection's principal
        self.principal = principal

    def close(self, code: int, reason: str) -> None:
        """End this membership; one document per socket: close the socket."""
        self.connection.close(code, reason)

    def revoke(self, to: Literal["none", "read"]) -> None:
        """Access revoked: ``"none"`` closes with 4403, ``"read"`` makes the member read-only."""
        if to == "none":
            self.connection.close(CloseCode.FORBIDDEN, "access revoked")
        else:
            self.access = "read"


class Origin:
    """Where a change came from. ``member`` is set for changes made by a connection here."""

    __slots__ = ("instance", "kind", "label", "member")

    def __init__(self, kind: Literal["member", "server", "broker", "store"], *,
                 member: Member | None = None, instance: str | None = None,
                 label: str | None = None) -> None:
        self.kind = kind
        self.member = member
        self.instance = instance
        #: who the server API acts for, as the change feed names them (default ``server``)
        self.label = label

    def __repr__(self) -> str:
        return f"<Origin {self.kind}>"


SERVER_ORIGIN: Final = Origin("server")
STORE_ORIGIN: Final = Origin("store")
