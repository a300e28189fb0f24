"""``/ws/hocuspocus``: Tiptap's ``HocuspocusProvider`` (2.x, 3.x, 4.x), many documents a socket.

One socket (a ``HocuspocusProviderWebsocket``) carries any number of documents, each named by
the address that prefixes its frames (``protocol/hocuspocus.py``). Each document of a socket is
a member of the same :class:`~captify_ws.rooms.document.DocumentRoom` as the y-websocket and
JSON clients of that name.

Per document, as Hocuspocus's server does (``server/src/ClientConnection.ts``):

1. The provider's Token goes to the authenticator (as ``Authorization: Bearer <token>`` on a copy
   of the upgrade request, so a session cookie still counts; an empty token means "the upgrade's
   own credentials"), then to the authorizer. ``Authenticated`` carries the scope
   (``read-write`` or ``readonly``); a refusal is ``PermissionDenied`` with its reason, for that
   document only. A v2 provider without a token sends no Token: its first frame opens the
   document when the upgrade itself authenticated, and is refused otherwise.
2. Until then its frames wait in a queue bounded per socket (5 MiB, 1000 messages, 100
   documents waiting: ``hocuspocus_socket.py``); past a bound the socket closes
   with 4205. A socket with no authenticated document ``hocuspocus_auth_deadline_s`` after it
   opened closes with 4408.
3. Step1 is answered with the server's Step1 then Step2; every Step2 and Update is acknowledged
   with SyncStatus (1 applied; 0 refused: read-only and new). Updates and presence go to every
   client of the document, whatever its wire format.
4. A bad message of an open document closes that document (CLOSE with the reason); frames the
   codec cannot address close the socket with 4401. Frames for a refused or closed document are
   dropped until the provider sends a new Token.

Every socket is sent a keepalive frame every ``hocuspocus_keepalive_s`` (Ping to v4 providers,
which answer Pong; to older ones a frame they drop): providers close a socket that received
nothing for 30 s. One timer serves every socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from time import monotonic
from typing import Final

from pycrdt import get_update

from captify_ws.auth import Principal, with_timeout
from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import (
    BadRequest,
    CloseCode,
    InvalidMessage,
    MessageTooBig,
    ProtocolError,
    Reject,
)
from captify_ws.handlers.base import HandlerContext
from captify_ws.handlers.hocuspocus_socket import (
    PREAUTH_MAX_DOCUMENTS,
    HocuspocusMember,
    Pending,
    Socket,
    with_token,
)
from captify_ws.protocol import hocuspocus as hp
from captify_ws.protocol import names, statevector
from captify_ws.protocol.ywebsocket import EMPTY_UPDATE
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.hocuspocus import adds_nothing, holds_structs
from captify_ws.stateless import StatelessEvent, member_user

logger = logging.getLogger("captify_ws.hocuspocus")

_KINDS: Final[dict[type, str]] = {
    hp.SyncUpdate: "update", hp.SyncStep1: "sync-step1", hp.SyncStep2: "sync-step2",
    hp.Awareness: "awareness", hp.QueryAwareness: "query-awareness", hp.Token: "auth",
    hp.Stateless: "stateless", hp.Close: "close", hp.Pong: "pong", hp.Unknown: "other",
}
_PING: Final = PreparedFrame.binary(hp.PING)
_SILENT_KEEPALIVE: Final = PreparedFrame.binary(hp.SILENT_KEEPALIVE)


class HocuspocusHandler:
    """The built-in Hocuspocus handler. See the module docstring."""

    path = "/ws/hocuspocus"
    name = "hocuspocus"
    #: documents authenticate with their own Token: the upgrade may come without credentials
    authenticates_messages = True

    def __init__(self, server: HandlerContext) -> None:
        self._server = server
        self._settings = server.settings
        self._stats = server.stats
        self._sockets = 0
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        conn.state = Socket(conn)
        self._sockets += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="captify-hocuspocus-keepalive")

    def on_close(self, conn: Connection, code: int) -> None:
        sock = conn.state
        if not isinstance(sock, Socket):
            return
        conn.state = None
        self._sockets -= 1
        for entry in list(sock.documents.values()):
            if isinstance(entry, Pending):
                sock.discard(entry)
            elif isinstance(entry, HocuspocusMember):
                self._leave(entry)
        sock.documents.clear()
        if self._sockets == 0 and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def on_error(self, conn: Connection, error: Exception) -> None:
        return None

    async def _sweep(self) -> None:
        """Keepalive frames for every socket; close those past the authentication deadline."""
        settings = self._settings
        while True:
            await asyncio.sleep(settings.hocuspocus_keepalive_s)
            deadline = monotonic() - settings.hocuspocus_auth_deadline_s
            for conn in list(self._server.connections.get(self.name, ())):
                sock = conn.state
                if not isinstance(sock, Socket):
                    continue
                if not sock.authenticated and sock.opened_at < deadline:
                    conn.close(CloseCode.AUTH_TIMEOUT, "no document authenticated in time")
                else:
                    conn.send_frame(_PING if sock.v4 else _SILENT_KEEPALIVE)

    # -- messages --------------------------------------------------------------------------

    def on_message(self, conn: Connection, message: str | bytes) -> Awaitable[None] | None:
        sock = conn.state
        if not isinstance(sock, Socket):
            return None
        if isinstance(message, str):
            raise ProtocolError("Hocuspocus messages are binary frames",
                                close_code=CloseCode.UNSUPPORTED_DATA)
        try:
            event = hp.decode(message)
        except hp.BadPayload as exc:
            entry = sock.documents.get(exc.address)
            if isinstance(entry, HocuspocusMember):
                entry.close(exc.close_code, exc.message)
                return None
            raise
        self._stats.received(_KINDS.get(type(event), "other"), len(message))
        if isinstance(event, hp.Pong):
            return None
        entry = sock.documents.get(event.address)
        if isinstance(entry, HocuspocusMember):
            return self._on_document(entry, event)
        if isinstance(entry, Pending):
            if isinstance(event, hp.Close):
                sock.discard(entry)
                del sock.documents[event.address]
            else:
                sock.enqueue(entry, event, len(message))
            return None
        if isinstance(event, hp.Token):
            sock.v4 = sock.v4 or event.provider_version is not None
            self._begin(sock, event.address, event.token, None)
        elif isinstance(event, hp.Close):
            sock.documents.pop(event.address, None)
        elif event.address not in sock.documents and not isinstance(event, hp.Unknown):
            # A v2 provider without a token sends no Token: the upgrade's credentials count.
            if isinstance(conn.principal, Principal):
                self._begin(sock, event.address, None, (event, len(message)))
            else:
                self._refuse(sock, event.address, "Unauthorized: no token")
        return None

    def _begin(self, sock: Socket, address: str, token: str | None,
               first: tuple[hp.AddressedEvent, int] | None) -> None:
        """Start authenticating a document (``token`` None: the upgrade's principal)."""
        if address not in sock.documents and \
                len(sock.documents) >= self._settings.hocuspocus_max_documents:
            self._refuse(sock, address, "too many documents on this connection", keep=False)
            return
        if sock.pending_count() >= PREAUTH_MAX_DOCUMENTS:
            raise ProtocolError(f"more than {PREAUTH_MAX_DOCUMENTS} documents waiting for "
                                "authentication", close_code=CloseCode.RESET_CONNECTION)
        document_id = hp.document_name(address)
        try:
            names.check_name(document_id)
            if not document_id.strip():
                raise BadRequest("document name is only whitespace")
        except BadRequest as exc:
            self._refuse(sock, address, exc.message)
            return
        pending = Pending()
        sock.documents[address] = pending
        if first is not None:
            sock.enqueue(pending, *first)
        pending.task = asyncio.get_running_loop().create_task(
            self._open(sock, address, document_id, pending, token))

    def _refuse(self, sock: Socket, address: str, reason: str, *, keep: bool = True) -> None:
        sock.connection.send_bytes(hp.FrameEncoder(address).permission_denied(reason))
        self._stats.refused("hocuspocus-document")
        if keep:
            sock.documents[address] = None
        logger.debug("%s: refused %r: %s", sock.connection.id, address, reason)

    async def _authenticate(self, conn: Connection, token: str | None,
                            document_id: str) -> Principal:
        """The Token's principal (after the ``on_authenticate`` hooks); an empty token (or
        Tiptap's ``"notoken"``) stands for the upgrade's own credentials."""
        if token and token != "notoken":
            server = self._server
            principal = await with_timeout(
                server.authenticator.authenticate(with_token(conn.request, token)),
                self._settings.auth_timeout_s)
            return await server.hooks.authenticate(conn, principal, document_id)
        if isinstance(conn.principal, Principal):
            return conn.principal
        raise Reject(CloseCode.UNAUTHORIZED, "Unauthorized: no token")

    async def _open(self, sock: Socket, address: str, document_id: str, pending: Pending,
                    token: str | None) -> None:
        conn = sock.connection
        server = self._server
        try:
            principal = await self._authenticate(conn, token, document_id)
            access = await server.authorize(conn, document_id, principal=principal)
            room = await server.rooms.acquire(
                document_id, f"user:{principal.user_id}" if principal.user_id is not None
                else server.creator_of(conn))
        except Reject as exc:
            if sock.documents.get(address) is pending:
                sock.discard(pending)
                self._refuse(sock, address, exc.reason)
            return
        except Exception:
            logger.exception("opening %r for %s failed", document_id, conn.id)
            if sock.documents.get(address) is pending:
                sock.discard(pending)
                self._refuse(sock, address, "server error")
            return
        if sock.documents.get(address) is not pending or conn.close_code is not None:
            server.rooms.release(room)
            return
        member = HocuspocusMember(sock, address, principal, access, self.end)
        room.join(member)
        sock.authenticated = True
        member.send(member.encoder.authenticated(read_only=access != "write"))
        for group in room.awareness_groups(state.entry() for state in room.presence.snapshot()):
            member.send(member.encoder.awareness(group))
        while pending.queue and sock.documents.get(address) is pending:
            result = self._on_document(member, sock.dequeue(pending))
            if result is not None:
                await result
        if sock.documents.get(address) is pending:
            sock.documents[address] = member
        while pending.queue:  # closed while draining: the rest is dropped, and unaccounted
            sock.dequeue(pending)
        logger.debug("%s opened %r (%s)", conn.id, document_id, access,
                     extra={"connection": conn.id, "document": document_id})

    def _on_document(self, member: HocuspocusMember,
                     event: hp.AddressedEvent) -> Awaitable[None] | None:
        room = member.room
        if room is None:
            return None
        try:
            return self._handle(member, room, event)
        except ProtocolError as exc:
            member.close(exc.close_code, exc.message)
            return None

    def _handle(self, member: HocuspocusMember, room: DocumentRoom,
                event: hp.AddressedEvent) -> Awaitable[None] | None:
        encoder = member.encoder
        if isinstance(event, hp.SyncUpdate):
            if member.access != "write":
                member.send(encoder.sync_status(False))
            else:
                room.apply_update(event.update, member.origin)  # acknowledged once applied
        elif isinstance(event, hp.SyncStep1):
            # Entries for clients the document does not know change nothing in the answer:
            # without them fresh providers share one cached answer (rooms/hocuspocus.py). The
            # answer's size is the work it took: it counts against the rate limit.
            own = room.state_vector()
            step1, step2 = room.hocuspocus.sync_answer(
                member, statevector.relevant_entries(event.state_vector, own), own,
                room.encode_state)
            if member.connection.charge_work(len(step2.payload)):
                member.connection.send_frame(step1)
                member.connection.send_frame(step2)
        elif isinstance(event, hp.SyncStep2):
            if event.update == EMPTY_UPDATE or _adds_nothing(room, event.update):
                member.send(encoder.sync_status(True))
            elif member.access != "write":
                member.send(encoder.sync_status(False))
            else:
                room.apply_update(event.update, member.origin)
        elif isinstance(event, hp.Awareness):
            limit = self._settings.max_awareness_size
            if any(len(entry.state) > limit for entry in event.entries):
                raise MessageTooBig(f"presence state larger than {limit} bytes")
            room.presence.apply(event.entries, member)
        elif isinstance(event, hp.QueryAwareness):
            # Always answered, with no entries when nobody has a state (Hocuspocus's
            # MessageReceiver replies with the awareness update of every state, even none).
            groups = list(room.awareness_groups(s.entry() for s in room.presence.snapshot()))
            for group in groups or [[]]:
                member.send(encoder.awareness(group))
        elif isinstance(event, hp.Stateless):
            stateless = self._server.stateless
            if stateless.hooks:
                return stateless.dispatch(StatelessEvent(
                    room.document_id, event.payload, member_user(member), member.connection,
                    member.encoder.address))
        elif isinstance(event, hp.Close):
            self._leave(member)
            member.socket.documents.pop(encoder.address, None)
        elif isinstance(event, hp.Token):
            return self._refresh(member, room.document_id, event.token)
        return None

    async def _refresh(self, member: HocuspocusMember, document_id: str, token: str) -> None:
        """A new token (the answer to a token request): authenticate and authorize again."""
        conn = member.connection
        try:
            principal = await self._authenticate(conn, token, document_id)
            access = await self._server.authorize(conn, document_id, principal=principal)
        except Reject as exc:
            if member.room is not None:
                member.send(member.encoder.permission_denied(exc.reason))
                member.close(exc.code, exc.reason)
            return
        member.principal = principal
        if member.room is not None and access != member.access:
            member.access = access
            member.send(member.encoder.authenticated(read_only=access != "write"))

    def request_token(self, room: DocumentRoom, user_id: str | None) -> int:
        """Ask this room's providers (of ``user_id``, or all) for a fresh token."""
        asked = 0
        for member in list(room.hocuspocus):
            if isinstance(member, HocuspocusMember) and \
                    (user_id is None or member_user(member) == user_id):
                member.send(member.encoder.token_request())
                asked += 1
        return asked

    # -- leaving ---------------------------------------------------------------------------

    def end(self, member: HocuspocusMember, reason: str) -> None:
        """The server closes one document of a socket: CLOSE, then later frames are dropped."""
        if member.room is None:
            return
        member.send(member.encoder.close(reason))
        self._leave(member)
        sock = member.socket
        entry = sock.documents.get(member.encoder.address)
        if entry is member or isinstance(entry, Pending):  # Pending: closed while draining
            sock.documents[member.encoder.address] = None
        logger.info("%s: closed %r: %s", member.connection.id, member.encoder.address, reason)

    def _leave(self, member: HocuspocusMember) -> None:
        room = member.room
        if room is not None:
            room.remove(member)
            self._server.rooms.release(room)


def _adds_nothing(room: DocumentRoom, update: bytes) -> bool:
    """Whether a Step2 brings nothing the document lacks (Hocuspocus acknowledges such a Step2
    even from a read-only provider, and it need not be applied or relayed)."""
    vector = room.state_vector()
    try:
        missing = get_update(update, vector)
    except ValueError:
        raise InvalidMessage("not a valid Yjs update") from None
    return not holds_structs(missing) and adds_nothing(missing, room.encode_state(vector))
