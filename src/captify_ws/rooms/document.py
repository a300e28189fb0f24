"""DocumentRoom: one loaded document — its pycrdt ``Doc``, members and presence (the
presence part in ``rooms/document_presence.py``).

Every change is tagged with an :class:`Origin` (a member, the server API, the broker, the store),
so that listeners (persistence, the broker) can tell what to store and what to publish, and
nothing is echoed back to where it came from (STYLE.md, habit 6).

The room speaks no wire format: its members are kept per format (``rooms/wire.py``:
y-websocket, JSON, Hocuspocus), and its one broadcast loop (:meth:`DocumentRoom._broadcast`) hands
each change to every format, which encodes it once and writes the same frame to every member of
that format. Who gets what (origins) and what happens to an update Yjs refuses is decided here,
once for every format. What broadcast does not guarantee: delivery. A member that cannot keep
up is closed with 1013 by its connection (see ``connection.py``) and resynchronises when it
reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, Final

from pycrdt import Doc

from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import InvalidMessage, QuotaExceeded
from captify_ws.metrics import Stats
from captify_ws.protocol import ycost, ywebsocket
from captify_ws.rooms.document_presence import DocumentPresence
from captify_ws.rooms.hocuspocus import HocuspocusMembers
from captify_ws.rooms.json_wire import JsonMembers
from captify_ws.rooms.member import Member, Origin, Wire
from captify_ws.rooms.steps import StepAuthority
from captify_ws.rooms.wire import WireMembers
from captify_ws.rooms.yws_wire import YwsMembers
from captify_ws.ydoc import YDoc

logger = logging.getLogger("captify_ws.rooms")

#: y-websocket's empty state vector: a client that has nothing.
EMPTY_STATE_VECTOR: Final = b"\x00"


UpdateListener = Callable[["DocumentRoom", bytes, Origin], None]
#: an update waiting to be integrated: (update, origin, received frame)
Pending = tuple[bytes, "Origin", bytes | None]
#: ``(room, json_text, client_id)``: a JSON relay for everyone (client_id None) or one client
RelayListener = Callable[["DocumentRoom", str, str | None], None]


class DocumentRoom(DocumentPresence):
    """One document loaded in this process; created by ``RoomManager``. Its presence part
    (awareness states, presence listeners) is :class:`DocumentPresence`."""

    __slots__ = ("_full_state", "_full_step2", "_json", "_loop", "_pending", "_pending_cost",
                 "_update_listeners", "_wires", "_yws", "closed", "deleted", "document_id",
                 "hocuspocus", "holds", "max_frame", "max_size", "relay_listeners", "stats",
                 "steps", "stored_size", "ydoc")

    def __init__(self, document_id: str, *, awareness_flush_s: float,
                 awareness_renewal_s: float, max_size: int = 0, max_frame: int = 16 << 20,
                 max_presence_states: int = 0, max_presence_bytes: int = 0,
                 stats: Stats | None = None) -> None:
        super().__init__(awareness_flush_s=awareness_flush_s,
                         awareness_renewal_s=awareness_renewal_s,
                         max_presence_states=max_presence_states,
                         max_presence_bytes=max_presence_bytes)
        self.document_id = document_id
        self.stats = stats if stats is not None else Stats()
        #: the quota: estimated bytes of memory the document may take (0: no quota)
        self.max_size = max_size
        #: the Yjs document (pycrdt, integrating updates as Yjs does; see ``ydoc.py``)
        self.ydoc = YDoc()
        self._yws = YwsMembers()
        self._json = JsonMembers(document_id)
        #: Hocuspocus members: several per connection (one per document it multiplexes)
        self.hocuspocus = HocuspocusMembers()
        #: every wire format, in the order a broadcast reaches them
        self._wires: tuple[WireMembers, ...] = (self._yws, self._json, self.hocuspocus)
        self._full_state: bytes | None = None
        self._full_step2: PreparedFrame | None = None
        #: updates waiting for the end of this loop turn (an empty tuple while none: memory
        #: per idle document)
        self._pending: list[Pending] | tuple[()] = ()
        self._pending_cost = 0
        #: the loop the room lives in, kept: Python 3.11's get_running_loop() is a getpid()
        #: system call, 3 % of a busy worker when asked once per update
        self._loop: asyncio.AbstractEventLoop | None = None
        self._update_listeners: list[UpdateListener] = []
        #: the cluster bridge's relay listeners (added by add_relay_listener; an empty tuple
        #: until then: memory per idle document)
        self.relay_listeners: list[RelayListener] | tuple[()] = ()
        #: no frame sent is larger than this (the message limit): presence is cut to fit
        self.max_frame = max_frame
        #: the ProseMirror step authority, loaded on first use (RoomManager.authority)
        self.steps: StepAuthority | None = None
        #: a user of the room that is not a connection (API call, load); blocks unloading
        self.holds = 0
        self.closed = False
        #: bytes of stored state the room was loaded from (``None``: the store had nothing)
        self.stored_size: int | None = None
        #: the room was unloaded because its document was deleted
        self.deleted = False

    def _wire(self, wire: Wire) -> WireMembers:
        """The members of one wire format (one lookup, no dict per room)."""
        if wire == "yws":
            return self._yws
        return self._json if wire == "json" else self.hocuspocus

    def __repr__(self) -> str:
        return f"<DocumentRoom {self.document_id!r} members={len(self)}>"

    # -- membership ------------------------------------------------------------------------

    def all_members(self) -> list[Member]:
        """Every member of every wire format."""
        return [member for wire in self._wires for member in wire]

    def __len__(self) -> int:
        return len(self._yws) + len(self._json) + len(self.hocuspocus)

    @property
    def doc(self) -> Doc[Any]:
        """The pycrdt document (a new object after :class:`YDoc` rebuilt it: do not keep it)."""
        return self.ydoc.doc

    @property
    def has_yjs_members(self) -> bool:
        return bool(self._yws) or bool(self.hocuspocus)

    def join(self, member: Member) -> None:
        member.room = self
        self._wire(member.wire).join(member)

    def remove(self, member: Member) -> None:
        """``member`` leaves (on a socket that carries many documents, that one document)."""
        if self._wire(member.wire).leave(member):
            if self._presence is not None:
                self._presence.remove_owned_by(member)
            member.room = None

    def leave(self, connection: Connection) -> Member | None:
        """The member of a socket that carries one document leaves; it, or ``None``."""
        member = (self._yws.by_connection.get(connection)
                  or self._json.by_connection.get(connection))
        if member is not None:
            self.remove(member)
        return member

    @property
    def idle(self) -> bool:
        """No members and nobody holding the room: it may unload."""
        return self.holds == 0 and not any(self._wires)

    def add_update_listener(self, listener: UpdateListener) -> None:
        self._update_listeners.append(listener)

    def add_relay_listener(self, listener: RelayListener) -> None:
        self.relay_listeners = [*self.relay_listeners, listener]

    # -- document --------------------------------------------------------------------------

    def load_state(self, update: bytes) -> None:
        """Apply stored state while loading; nobody is told."""
        self.ydoc.apply(update)
        self._changed()

    # -- the quota -------------------------------------------------------------------------

    @property
    def cost(self) -> int:
        """Estimated bytes of memory the document takes here: its Yjs document and, once
        loaded, its ProseMirror step authority (document and kept steps)."""
        return self.ydoc.cost + (self.steps.cost if self.steps is not None else 0)

    def admit(self, extra: int) -> None:
        """Raise :class:`QuotaExceeded` if adding ``extra`` estimated bytes would take the
        document past ``max_size``.

        Estimates only grow between measurements (typing merges into few structs, deleted
        content is collected), so before refusing, the cost is measured again from the
        documents themselves — at most once per sixteenth of the quota added, so that a client
        hovering at the quota cannot make the server measure on every message.
        """
        if not self.max_size or self.cost + self._pending_cost + extra <= self.max_size:
            return
        stale = self.ydoc.cost_since_measure + (
            self.steps.cost_since_measure if self.steps is not None else 0)
        if stale >= self.max_size // 16:
            self.flush_pending()
            self.ydoc.measure()
            if self.steps is not None:
                self.steps.measure()
            if self.cost + extra <= self.max_size:
                return
        raise QuotaExceeded(f"document quota of {self.max_size} bytes exceeded (the "
                            f"document takes ~{self.cost + self._pending_cost}, this change "
                            f"~{extra})", quota=self.max_size)

    def apply_update(self, update: bytes, origin: Origin, *, frame: bytes | None = None) -> None:
        """Apply a Yjs update and send it to the members (and to the update listeners).

        y-websocket members get it even when they sent it (y-websocket 4 counts that echo as the
        server's acknowledgement); JSON members get it except for its sender. ``frame`` is the
        received y-websocket message when there is one, relayed as it is. An update Yjs cannot
        apply is never relayed and changes nothing: its y-websocket sender is closed with 1007,
        a JSON sender gets an ``error``.

        Updates from clients and from the broker are integrated in batches: every update that
        arrives in one turn of the event loop is applied in one Yjs transaction before any is
        relayed. Yjs merges an author's consecutive insertions into one block, and yrs copies
        that block on every transaction that extends it, so one transaction per keystroke
        costs time in proportion to the text typed in one run (400 µs per update at 1 MB); one
        per batch keeps a busy document's cost flat. Updates from the server API are applied
        at once (the caller waits for them to be stored).
        """
        cost = 0
        if self.max_size and origin.kind != "broker":
            cost = ycost.cost_of(update)
            self.admit(cost)
        if origin.kind not in ("member", "broker"):
            self.flush_pending()
            self.ydoc.apply(update, cost or None)
            self._applied(update, origin, frame)
            return
        if self._pending:
            self._pending.append((update, origin, frame))
        else:
            self._pending = [(update, origin, frame)]
        self._pending_cost += cost
        if len(self._pending) == 1:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush_pending)

    def flush_pending(self) -> None:
        """Integrate and relay the updates waiting for the end of this loop turn."""
        if not self._pending:
            return
        batch, self._pending = self._pending, ()
        self._pending_cost = 0
        if len(batch) == 1:
            accepted = self._integrate_each(batch)
        else:
            try:
                merged = self.ydoc.apply_batch([update for update, _, _ in batch])
            except InvalidMessage:
                merged = False
            accepted = batch if merged else self._integrate_each(batch)
        if len(accepted) == 1:
            self._applied(*accepted[0])
        elif accepted:
            self._applied_batch(accepted)

    def _integrate_each(self, batch: list[Pending]) -> list[Pending]:
        """Apply one by one; an update Yjs decodes but cannot integrate is dropped and its
        sender closed (1007), as if it had failed on arrival."""
        accepted = []
        for entry in batch:
            try:
                self.ydoc.apply(entry[0])
                accepted.append(entry)
            except InvalidMessage as exc:
                member = entry[1].member
                if member is not None:
                    self._wire(member.wire).refuse(member, exc)
                logger.warning("dropped an update for %r: %s", self.document_id, exc)
        return accepted

    def transact(self, edit: Callable[[], None], origin: Origin) -> bool:
        """Change the document from server code (``edit`` runs in one transaction) and send
        the resulting update like any other; returns whether anything changed."""
        self.flush_pending()
        updates: list[bytes] = []
        subscription = self.doc.observe(lambda event: updates.append(event.update))
        try:
            with self.doc.transaction():
                edit()
        finally:
            self.doc.unobserve(subscription)
        for update in updates:
            self.ydoc.record_local(update)
            self._applied(update, origin, None)
        return bool(updates)

    def _changed(self) -> None:
        """The document changed: every answer built for it before is stale."""
        self._full_state = None
        self._full_step2 = None
        for wire in self._wires:
            wire.changed()

    def _broadcast(self, updates: Sequence[bytes], senders: Sequence[Member | None],
                   frames: Sequence[bytes | None]) -> None:
        """The one broadcast loop: every wire format with members gets the updates (each
        member its share in one write, in order; see ``wire.py``)."""
        for wire in self._wires:
            if wire:
                wire.send_updates(updates, senders, frames)

    def _applied(self, update: bytes, origin: Origin, frame: bytes | None) -> None:
        """An update is in the document: tell the members, then the listeners."""
        self._changed()
        if update == ywebsocket.EMPTY_UPDATE:
            return
        started = perf_counter()
        self._broadcast((update,), (origin.member,), (frame,))
        self.stats.broadcast("update", len(self), perf_counter() - started)
        for listener in self._update_listeners:
            listener(self, update, origin)

    def _applied_batch(self, batch: list[Pending]) -> None:
        """Updates are in the document: tell the members (:meth:`_broadcast`), then the
        listeners, update by update, told the origin."""
        self._changed()
        batch = [entry for entry in batch if entry[0] != ywebsocket.EMPTY_UPDATE]
        if not batch:
            return
        started = perf_counter()
        self._broadcast([update for update, _, _ in batch],
                        [origin.member for _, origin, _ in batch],
                        [frame for _, _, frame in batch])
        elapsed = (perf_counter() - started) / len(batch)
        for update, origin, _ in batch:
            self.stats.broadcast("update", len(self), elapsed)
            for listener in self._update_listeners:
                listener(self, update, origin)

    def encode_state(self, state_vector: bytes | None = None) -> bytes:
        """The document as one Yjs update, or what ``state_vector`` lacks.

        The full state is cached for fresh joiners until the next update.
        """
        self.flush_pending()
        if state_vector is None or state_vector == EMPTY_STATE_VECTOR:
            if self._full_state is None:
                self._full_state = self.ydoc.encode()
            return self._full_state
        return self.ydoc.encode(state_vector)

    def sync_step2(self, state_vector: bytes) -> PreparedFrame:
        """The y-websocket answer to a sync step 1; for a fresh client (empty state vector)
        the frame is built once and reused until the next update."""
        self.flush_pending()
        if state_vector == EMPTY_STATE_VECTOR:
            if self._full_step2 is None:
                self._full_step2 = PreparedFrame.binary(
                    ywebsocket.encode_sync_step2(self.encode_state()))
            return self._full_step2
        return PreparedFrame.binary(ywebsocket.encode_sync_step2(
            self.encode_state(state_vector)))

    def state_vector(self) -> bytes:
        self.flush_pending()
        return self.ydoc.state_vector()

    # -- relaying --------------------------------------------------------------------------

    def relay_json(self, text: str, sender: Member | None, *, publish: bool = True) -> int:
        """Send a JSON message to every JSON member except ``sender`` (and, with ``publish``,
        to the relay listeners: the other instances); returns how many got it here."""
        self.flush_pending()  # keep the order in which things arrived
        sent = self._json.relay(text, sender)
        if publish:
            for listener in self.relay_listeners:
                listener(self, text, None)
        return sent

    def send_to_client(self, client_id: str, text: str, *, publish: bool = True) -> int:
        """Send a JSON message to the JSON members with this clientID (here, and with
        ``publish`` on the other instances); returns how many got it here."""
        self.flush_pending()
        sent = self._json.send_to_client(client_id, text)
        if publish:
            for listener in self.relay_listeners:
                listener(self, text, client_id)
        return sent

    def close(self) -> None:
        """The room is unloading. The references back to it (the step authority's quota check,
        the presence's broadcast) are dropped, so that no cycle keeps the document, its steps
        and their ProseMirror documents in memory until a full garbage collection (RSS stayed
        100+ MB up after 30 steps of 1 MB, issue 13.6)."""
        self.flush_pending()
        self.closed = True
        self._close_presence()
        if self.steps is not None:
            self.steps.admit = None
        self._update_listeners.clear()
        self.relay_listeners = ()
