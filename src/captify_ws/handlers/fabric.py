"""``/ws/fabric``: collaborative documents, in two wire formats on the same rooms.

* ``/ws/fabric?documentId=D&clientID=C`` — the seed's JSON protocol (``protocol/envelope.py``).
  Errors in a message are answered with an ``error`` message; the connection stays open.
  ``steps``, ``doc`` and ``steps-since`` go to the ProseMirror step authority.
* ``/ws/fabric/D`` — the y-websocket binary protocol (``protocol/ywebsocket.py``), what the npm
  ``WebsocketProvider`` speaks. A malformed message closes the connection with 1007 (the
  protocol has no error message); the provider reconnects and resynchronises.

Both reach the same :class:`~captify_ws.rooms.document.DocumentRoom`, so JSON and Yjs clients of
one document see each other's edits and presence.

Idle viewers stay connected (issue 12.5): a ``WebsocketProvider`` closes a socket on which it
received no message for 30 s (y-websocket ``messageReconnectTimeout``; WebSocket pings do not
count), and a viewer without presence on a quiet document receives nothing. Every
``yws_keepalive_s`` each y-websocket connection is sent one empty awareness update (3 bytes,
encoded once, which every y-websocket version applies as a no-op): a constant cost per
connection, never a broadcast of states.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final
from urllib.parse import parse_qsl

from captify_ws.auth import Access
from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import (
    BadRequest,
    InvalidMessage,
    JsonTooDeep,
    MessageTooBig,
    ProtocolError,
)
from captify_ws.handlers.base import HandlerContext
from captify_ws.protocol import envelope, names, statevector, ywebsocket
from captify_ws.protocol.ycost import cost_from_header
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Member, Origin
from captify_ws.rooms.steps import Accepted, Behind

logger = logging.getLogger("captify_ws.fabric")

#: An awareness update with no entries: y-protocols applies it as a no-op, and it resets the
#: provider's 30 s silence timer.
KEEPALIVE: Final = PreparedFrame.binary(ywebsocket.encode_awareness([]))

_YWS_KINDS: dict[type, str] = {
    ywebsocket.SyncUpdate: "update", ywebsocket.SyncStep1: "sync-step1",
    ywebsocket.SyncStep2: "sync-step2", ywebsocket.AwarenessUpdate: "awareness",
    ywebsocket.QueryAwareness: "query-awareness", ywebsocket.AuthMessage: "auth",
}
_JSON_KINDS: dict[type, str] = {
    envelope.UpdateMessage: "update", envelope.SyncRequest: "sync",
    envelope.AwarenessMessage: "awareness", envelope.SelectionMessage: "selection",
    envelope.StepsMessage: "steps", envelope.DocRequest: "doc",
    envelope.StepsSinceRequest: "steps-since",
}


def _steps_text(document_id: str, outcome: Accepted | Behind) -> str:
    if isinstance(outcome, Accepted):
        return envelope.encode_steps(document_id, outcome.version, outcome.steps,
                                     outcome.client_ids, outcome.change_id,
                                     step_texts=outcome.texts)
    return envelope.encode_steps(document_id, outcome.version, outcome.steps,
                                 outcome.client_ids)


def _send_error(conn: Connection, document_id: str, exc: ProtocolError) -> None:
    conn.send_text(envelope.encode_error(document_id, exc.message,
                                         getattr(exc, "data", None)))


class FabricMember(Member):
    """A fabric connection's membership, with its origin tag made once (on its first edit:
    a viewer that never writes needs none)."""

    __slots__ = ("_origin",)

    def __init__(self, connection: Connection, client_id: str, wire: str,
                 access: Access) -> None:
        super().__init__(connection, client_id, "yws" if wire == "yws" else "json",
                         access=access)
        self._origin: Origin | None = None

    @property
    def origin(self) -> Origin:
        if self._origin is None:
            self._origin = Origin("member", member=self)
        return self._origin


class FabricHandler:
    """The built-in collaboration handler. See the module docstring."""

    path = "/ws/fabric"
    name = "fabric"

    def __init__(self, server: HandlerContext) -> None:
        self._server = server
        self._stats = server.stats
        self._yws_members = 0
        self._keepalive: asyncio.Task[None] | None = None

    def affinity(self, subpath: str, query: str) -> str | None:
        """The document a connection to ``/ws/fabric/<subpath>?<query>`` will serve, when its
        request names it: the y-websocket path, or the JSON protocol's ``documentId``
        (``--workers`` moves the connection to the document's worker: transport/handoff.py).
        Raises ``BadRequest`` for a name that is not one."""
        if subpath:
            return names.name_from_path(subpath)
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "documentId":
                return value or None
        return None

    # -- lifecycle -------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        if conn.subpath:
            wire = "yws"
            document_id = names.name_from_path(conn.subpath)
            client_id = conn.id
        else:
            wire = "json"
            document_id = conn.request.query.get("documentId", "")
            if not document_id:
                raise BadRequest("missing documentId: connect to "
                                 "/ws/fabric?documentId=<id>&clientID=<id>")
            names.check_name(document_id)
            client_id = conn.request.query.get("clientID") or f"client-{conn.id}"
        access = await self._server.authorize(conn, document_id)
        # A peer that closed meanwhile still joins: what it sent before closing is handled
        # (applied and stored), then on_close removes it. One the server closed does not.
        if conn.closed_by_server:
            return
        rooms = self._server.rooms
        room = await rooms.acquire(document_id, self._server.creator_of(conn))
        if conn.closed_by_server:
            rooms.release(room)
            return
        member = FabricMember(conn, client_id, wire, access)
        room.join(member)
        conn.state = member
        if member.wire == "yws":
            self._yws_members += 1
            if self._keepalive is None and self._server.settings.yws_keepalive_s > 0:
                self._keepalive = asyncio.get_running_loop().create_task(
                    self._keepalives(), name="captify-yws-keepalive")
        if member.wire == "yws":
            conn.send_bytes(ywebsocket.encode_sync_step1(room.state_vector()))
        else:
            conn.send_text(envelope.encode_connected(
                document_id, client_id, self._server.document_connection_count(document_id)))
        for frame in room.presence_frames_for(member.wire):
            conn.send_frame(frame)
        logger.debug("%s joined %r (%s, %s)", conn.id, document_id, member.wire, access,
                     extra={"connection": conn.id, "document": document_id})

    def on_close(self, conn: Connection, code: int) -> None:
        member = conn.state
        if isinstance(member, FabricMember) and member.room is not None:
            if member.wire == "yws":
                self._yws_members -= 1
                if self._yws_members == 0 and self._keepalive is not None:
                    self._keepalive.cancel()
                    self._keepalive = None
            room = member.room
            room.leave(conn)
            self._server.rooms.release(room)
            logger.info("%s left %r (%s) code=%s", conn.id, room.document_id, member.wire, code,
                        extra={"connection": conn.id, "document": room.document_id,
                               "close_code": code})

    def on_error(self, conn: Connection, error: Exception) -> None:
        return None

    async def _keepalives(self) -> None:
        """The same 3-byte frame to every y-websocket connection every ``yws_keepalive_s``."""
        while True:
            await asyncio.sleep(self._server.settings.yws_keepalive_s)
            for conn in list(self._server.connections.get(self.name, ())):
                member = conn.state
                if isinstance(member, FabricMember) and member.wire == "yws":
                    conn.send_frame(KEEPALIVE)

    # -- messages --------------------------------------------------------------------------

    def _on_yws(self, conn: Connection, member: FabricMember, room: DocumentRoom,
                message: str | bytes) -> None:
        if isinstance(message, str):
            raise InvalidMessage("y-websocket messages are binary frames")
        event = ywebsocket.decode_message(message)
        self._stats.received(_YWS_KINDS.get(type(event), "other"), len(message))
        if isinstance(event, ywebsocket.SyncUpdate):
            if self._may_write(conn, member):
                room.apply_update(event.update, member.origin, frame=event.frame)
        elif isinstance(event, ywebsocket.SyncStep1):
            # Entries for clients the document does not know change nothing in the answer;
            # without them most joiners get the cached full-state frame (statevector.py).
            # The answer's size is the work it took: it counts against the rate limit.
            reply = room.sync_step2(statevector.relevant_entries(event.state_vector,
                                                                 room.state_vector()))
            if conn.charge_work(len(reply)):
                conn.send_frame(reply)
        elif isinstance(event, ywebsocket.SyncStep2):
            if event.update != ywebsocket.EMPTY_UPDATE and self._may_write(conn, member):
                room.apply_update(event.update, member.origin)
        elif isinstance(event, ywebsocket.AwarenessUpdate):
            limit = self._server.settings.max_awareness_size
            if any(len(entry.state) > limit for entry in event.entries):
                raise MessageTooBig(f"presence state larger than {limit} bytes")
            room.presence.apply(event.entries, member)
        elif isinstance(event, ywebsocket.QueryAwareness):
            for frame in room.presence_frames_for("yws"):
                conn.send_frame(frame)
        # AuthMessage and unknown message types are tolerated and ignored, as y-websocket does.

    def on_message(self, conn: Connection, message: str | bytes) -> Awaitable[None] | None:
        member = conn.state
        if not isinstance(member, FabricMember) or member.room is None:
            return None
        if member.wire == "yws":
            self._on_yws(conn, member, member.room, message)
            return None
        return self._on_json(conn, member, member.room, message)

    def screen(self, conn: Connection, payload: memoryview, text: bool) -> bool:
        """A large message, before it is copied or decoded: a JSON message past
        ``max_json_values`` is refused (the same ``error`` as after decoding; the connection
        stays), and a y-websocket update past the document's quota raises
        :class:`QuotaExceeded` (1009), both from the raw bytes. Copying or decoding 15 MB
        only to refuse it held the event loop 30-150 ms (fresh pages on this machine)."""
        member = conn.state
        if not isinstance(member, FabricMember) or member.room is None:
            return False
        room = member.room
        if text:
            limit = self._server.settings.max_json_values
            if member.wire == "yws" or not envelope.more_values_than(payload, limit):
                return False
            _send_error(conn, room.document_id, envelope.too_many_values(limit))
            return True
        if member.wire != "yws" or member.access != "write" or not room.max_size:
            return False
        start = ywebsocket.peek_update(payload[:16].tobytes(), len(payload))
        if start is not None:
            cost = cost_from_header(payload[start:start + 16].tobytes(), len(payload) - start)
            if cost is not None:
                room.admit(cost)  # raises QuotaExceeded past the quota
        return False

    @staticmethod
    def _may_write(conn: Connection, member: FabricMember) -> bool:
        """Read-only y-websocket members: their edits are dropped, and they are told once
        with y-websocket's auth message (permission denied)."""
        if member.access == "write":
            return True
        if not member.told_read_only:
            member.told_read_only = True
            conn.send_bytes(ywebsocket.encode_permission_denied("read-only"))
        return False

    def _on_json(self, conn: Connection, member: FabricMember, room: DocumentRoom,
                 message: str | bytes) -> Awaitable[None] | None:
        document_id = room.document_id
        try:
            event = envelope.decode_client_message(
                message, max_values=self._server.settings.max_json_values)
            self._stats.received(_JSON_KINDS.get(type(event), "other"), len(message))
            if event.document_id != document_id:
                raise InvalidMessage(f"documentId {event.document_id!r} is not this "
                                     f"connection's document {document_id!r}")
            if isinstance(event, (envelope.StepsMessage, envelope.DocRequest,
                                  envelope.StepsSinceRequest)):
                return self._step_request(conn, member, room, event)
            self._handle_json(conn, member, room, event)
        except JsonTooDeep:
            raise  # hostile, not a mistake: closes with 4400
        except ProtocolError as exc:
            _send_error(conn, document_id, exc)
        return None

    async def _step_request(self, conn: Connection, member: FabricMember, room: DocumentRoom,
                            event: envelope.StepsMessage | envelope.DocRequest
                            | envelope.StepsSinceRequest) -> None:
        """The ProseMirror step authority: doc, steps-since and steps (rooms/steps.py)."""
        document_id = room.document_id
        server = self._server
        try:
            authority = await server.rooms.authority(room)
            if isinstance(event, envelope.DocRequest):
                conn.send_text(envelope.encode_message("doc", document_id, {
                    "doc": authority.doc.to_json(), "version": authority.version}))
            elif isinstance(event, envelope.StepsSinceRequest):
                conn.send_text(_steps_text(document_id, authority.since(event.version)))
            elif member.access != "write":
                conn.send_text(envelope.encode_error(document_id, "Access denied",
                                                     {"code": "read_only"}))
            else:
                version, steps, client_id = envelope.decode_steps(event.data)
                async with authority.lock:
                    outcome = await authority.submit(version, steps, client_id)
                if isinstance(outcome, Accepted):
                    server.publish_steps(room, outcome)
                elif isinstance(outcome, Behind):
                    conn.send_text(_steps_text(document_id, outcome))
        except ProtocolError as exc:
            _send_error(conn, document_id, exc)

    def _handle_json(self, conn: Connection, member: FabricMember, room: DocumentRoom,
                     event: envelope.ClientMessage) -> None:
        document_id = room.document_id
        if isinstance(event, envelope.UpdateMessage) and member.access != "write":
            conn.send_text(envelope.encode_error(document_id, "Access denied",
                                                 {"code": "read_only"}))
            return
        if isinstance(event, envelope.UpdateMessage):
            room.apply_update(event.update, member.origin)
        elif isinstance(event, envelope.SyncRequest):
            wanted = event.state_vector
            if wanted is not None:
                wanted = statevector.relevant_entries(wanted, room.state_vector())
            update = room.encode_state(wanted)
            if not conn.charge_work(len(update)):
                return
            conn.send_text(envelope.encode_synced(document_id, update, room.state_vector()))
        elif isinstance(event, envelope.AwarenessMessage):
            limit = self._server.settings.max_awareness_size
            if event.state is not None and len(envelope.dumps(event.state)) > limit:
                raise MessageTooBig(f"presence state larger than {limit} bytes")
            if not room.presence.set_json_state(member.client_id, event.state, member):
                conn.send_text(envelope.encode_error(
                    document_id, f"the presence of clientID {member.client_id!r} belongs to "
                    "another connection", {"code": "presence_not_owned"}))
        elif isinstance(event, envelope.SelectionMessage):
            room.relay_json(envelope.encode_message("selection", document_id, event.selection,
                                                    client_id=member.client_id), member)
