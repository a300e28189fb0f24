"""The state of one ``/ws/hocuspocus`` socket: its documents, open or waiting for their
authentication, and the queue (bounded per socket) that holds their frames meanwhile."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Final

from captify_ws.auth import Access, Principal
from captify_ws.connection import Connection, PreparedFrame, UpgradeRequest
from captify_ws.errors import CloseCode, ProtocolError
from captify_ws.protocol import hocuspocus as hp
from captify_ws.rooms.member import Member, Origin

#: Pre-authentication bounds of one socket (Hocuspocus 4.3's defaults, GHSA-xwhh-v746-pj9m).
PREAUTH_MAX_BYTES: Final = 5 << 20
PREAUTH_MAX_MESSAGES: Final = 1000
PREAUTH_MAX_DOCUMENTS: Final = 100


class Pending:
    """A document waiting for its authentication; its frames wait here, in order."""

    __slots__ = ("queue", "task")

    def __init__(self) -> None:
        self.queue: deque[tuple[hp.AddressedEvent, int]] = deque()
        self.task: asyncio.Task[None] | None = None


class Socket:
    """One provider socket: its documents by address (a :class:`HocuspocusMember` when open,
    :class:`Pending` while authenticating, ``None`` once refused or closed by the server)."""

    __slots__ = ("authenticated", "connection", "documents", "opened_at", "queued_bytes",
                 "queued_messages", "v4")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.documents: dict[str, HocuspocusMember | Pending | None] = {}
        self.opened_at = monotonic()
        #: some document authenticated once (the pre-authentication deadline no longer applies)
        self.authenticated = False
        #: a v4 provider (its Token carried a version): it understands Ping
        self.v4 = False
        self.queued_bytes = 0
        self.queued_messages = 0

    def pending_count(self) -> int:
        return sum(isinstance(entry, Pending) for entry in self.documents.values())

    def enqueue(self, pending: Pending, event: hp.AddressedEvent, size: int) -> None:
        if self.queued_bytes + size > PREAUTH_MAX_BYTES or \
                self.queued_messages + 1 > PREAUTH_MAX_MESSAGES:
            raise ProtocolError(f"more than {PREAUTH_MAX_MESSAGES} messages or "
                                f"{PREAUTH_MAX_BYTES} bytes before authentication",
                                close_code=CloseCode.RESET_CONNECTION)
        pending.queue.append((event, size))
        self.queued_bytes += size
        self.queued_messages += 1

    def dequeue(self, pending: Pending) -> hp.AddressedEvent:
        event, size = pending.queue.popleft()
        self.queued_bytes -= size
        self.queued_messages -= 1
        return event

    def discard(self, pending: Pending) -> None:
        while pending.queue:
            self.dequeue(pending)
        if pending.task is not None:
            pending.task.cancel()


class HocuspocusMember(Member):
    """One document of a provider socket, a member of that document's room."""

    __slots__ = ("_end", "encoder", "origin", "socket")

    def __init__(self, socket: Socket, address: str, principal: Principal, access: Access,
                 end: Callable[[HocuspocusMember, str], None]) -> None:
        super().__init__(socket.connection, socket.connection.id, "hocuspocus", access=access,
                         address=address, principal=principal)
        #: the handler's way to close one document (CLOSE, leave the room, drop later frames)
        self._end = end
        self.socket = socket
        self.encoder = hp.FrameEncoder(address)
        self.origin = Origin("member", member=self)

    def send(self, frame: bytes) -> None:
        self.connection.send_frame(PreparedFrame.binary(frame))

    def close(self, code: int, reason: str) -> None:
        """Close this document only (CLOSE with ``reason``); the socket stays open."""
        self._end(self, reason)

    def revoke(self, to: str) -> None:
        """``"none"``: PermissionDenied then CLOSE; ``"read"``: ``Authenticated("readonly")``."""
        if to == "none":
            self.send(self.encoder.permission_denied("access revoked"))
            self.close(CloseCode.FORBIDDEN, "access revoked")
        elif self.access != "read":
            self.access = "read"
            self.send(self.encoder.authenticated(read_only=True))


def with_token(request: UpgradeRequest, token: str) -> UpgradeRequest:
    """A copy of the upgrade request carrying ``token`` as ``Authorization: Bearer``."""
    headers = [(name, value) for name, value in request.headers if name != "authorization"]
    headers.append(("authorization", f"Bearer {token}"))
    return UpgradeRequest(request.path, request.query_string, headers, request.client)

