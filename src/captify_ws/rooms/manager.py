"""RoomManager: rooms load once, on first use, and unload when nobody needs them.

* Concurrent first joiners of a document wait for one load and all get the loaded room: nobody
  sees an empty document before the stored one arrives (pycrdt-websocket loses the second joiner).
* A room unloads ``room_grace_s`` after its last member leaves, once everything it accepted is
  in the store; its stored log is compacted on the way out. If the store cannot take the writes,
  the room stays loaded and tries again later.
* The rooms waiting out their grace period hold at most ``max_idle_document_bytes`` of
  estimated memory (``DocumentRoom.cost``) together: past it those waiting longest unload at
  once. Without it one client filling a new document to the quota every half second kept
  rate x grace of them loaded (12 at the 32 MB quota: +266 MB, issue 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from prosemirror.model import Schema

from captify_ws.config import Settings
from captify_ws.errors import CloseCode, Reject
from captify_ws.metrics import Stats
from captify_ws.rooms.creation import CreationLimiter
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Origin
from captify_ws.rooms.steps import StepAuthority, default_schema
from captify_ws.store.base import DocumentStore
from captify_ws.store.writer import StoreWriter

logger = logging.getLogger("captify_ws.rooms")

RoomListener = Callable[[DocumentRoom], None]


def who_label(origin: Origin) -> str:
    """Who made a change, as the change feed names them (``store/history.py``):
    ``agent:<name>`` for a principal whose claims name an agent, ``user:<id>``,
    ``anonymous``, or the server API's label (``server`` unless it said)."""
    member = origin.member
    if member is None:
        return origin.label or "server"
    principal = member.principal or member.connection.principal
    claims = getattr(principal, "claims", None) or {}
    agent = claims.get("agent") if isinstance(claims, dict) else None
    if isinstance(agent, str) and agent:
        return f"agent:{agent}"
    user_id = getattr(principal, "user_id", None)
    return f"user:{user_id}" if user_id is not None else "anonymous"


class RoomManager:
    """The rooms of this process, by document id."""

    def __init__(self, store: DocumentStore, writer: StoreWriter, settings: Settings,
                 schema: Schema[Any, Any] | None = None, *, stats: Stats | None = None) -> None:
        self.stats = stats if stats is not None else Stats()
        self.store = store
        self.writer = writer
        self._settings = settings
        self.schema = schema if schema is not None else default_schema()
        self.rooms: dict[str, DocumentRoom] = {}
        self._loading: dict[str, asyncio.Task[DocumentRoom]] = {}
        self._unloads: dict[str, asyncio.TimerHandle] = {}
        self._unloading: set[asyncio.Task[None]] = set()
        self.on_load: list[RoomListener] = []
        self.on_unload: list[RoomListener] = []
        self.creations = CreationLimiter(settings.document_create_rate)

    def __len__(self) -> int:
        return len(self.rooms)

    def get(self, document_id: str) -> DocumentRoom | None:
        """The room if it is loaded here, else ``None`` (never loads)."""
        return self.rooms.get(document_id)

    async def acquire(self, document_id: str, creator: str | None = None) -> DocumentRoom:
        """The loaded room, loading it once however many callers ask at the same moment.

        The caller must join it, or call :meth:`release`, without awaiting in between.
        ``creator`` (a user or a client address) is charged when the document is not in the
        store: past ``document_create_rate`` this raises ``Reject(4429)`` and loads nothing
        (``creation.py``).
        """
        room = self.rooms.get(document_id)
        if room is not None:
            self._cancel_unload(document_id)
            return room
        task = self._loading.get(document_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(document_id, creator))
            self._loading[document_id] = task
        room = await asyncio.shield(task)
        self._cancel_unload(document_id)
        return room

    @contextlib.asynccontextmanager
    async def hold(self, document_id: str) -> AsyncIterator[DocumentRoom]:
        """Use a room without being a member (server API); it stays loaded meanwhile."""
        room = await self.acquire(document_id)
        room.holds += 1
        try:
            yield room
        finally:
            room.holds -= 1
            self.release(room)

    async def authority(self, room: DocumentRoom) -> StepAuthority:
        """The room's ProseMirror step authority, loaded from the store on first use."""
        if room.steps is None:
            authority = StepAuthority(room.document_id, self.schema, self.store)
            await authority.load()
            if room.steps is None:  # nobody loaded it meanwhile
                authority.admit = room.admit
                room.steps = authority
        return room.steps

    def release(self, room: DocumentRoom, *, bound: bool = True) -> None:
        """A member left or a hold ended: unload after the grace period if nobody is left
        (sooner past ``max_idle_document_bytes``, unless ``bound`` is false)."""
        if not room.idle or room.closed or room.document_id in self._unloads:
            return
        loop = asyncio.get_running_loop()
        self._unloads[room.document_id] = loop.call_later(
            self._settings.room_grace_s, self._start_unload, room)
        if bound:
            self._bound_idle()

    def _bound_idle(self) -> None:
        """Unload at once the rooms waiting longest for their grace period to end while those
        waiting hold more than ``max_idle_document_bytes`` together."""
        limit = self._settings.max_idle_document_bytes
        if not limit:
            return
        waiting = [self.rooms[document_id] for document_id in self._unloads
                   if document_id in self.rooms]  # insertion order: waiting longest first
        total = sum(room.cost for room in waiting)
        for room in waiting:
            if total <= limit:
                break
            total -= room.cost
            self._cancel_unload(room.document_id)
            self._start_unload(room)

    async def _load(self, document_id: str, creator: str | None = None) -> DocumentRoom:
        try:
            stored = await self.store.load(document_id)
            if stored is None and creator is not None and not self.creations.allow(creator):
                self.stats.refused("document-create-rate")
                raise Reject(CloseCode.RATE_LIMITED, "too many new documents: at most "
                             f"{self.creations.rate_per_minute:g} a minute")
            room = DocumentRoom(document_id,
                                awareness_flush_s=self._settings.awareness_flush_ms / 1000,
                                awareness_renewal_s=self._settings.awareness_renewal_s,
                                max_size=self._settings.max_document_size,
                                max_frame=self._settings.max_message_size,
                                max_presence_states=self._settings.max_presence_states,
                                max_presence_bytes=self._settings.max_presence_bytes,
                                stats=self.stats)
            if stored is not None:
                if stored.snapshot:
                    room.load_state(stored.snapshot)
                for update in stored.updates:
                    room.load_state(update)
                room.stored_size = len(stored.snapshot or b"") + sum(map(len, stored.updates))
                self.writer.note_loaded(document_id, len(stored.updates))
            else:
                self.writer.note_loaded(document_id, 0)
            room.add_update_listener(self._persist)
            self.rooms[document_id] = room
            for listener in self.on_load:
                listener(room)
            return room
        finally:
            del self._loading[document_id]

    def _persist(self, room: DocumentRoom, update: bytes, origin: Origin) -> None:
        # Changes that arrive from the broker were stored by the instance that accepted them.
        if origin.kind in ("member", "server"):
            self.writer.enqueue(room.document_id, update, who_label(origin))

    def _cancel_unload(self, document_id: str) -> None:
        handle = self._unloads.pop(document_id, None)
        if handle is not None:
            handle.cancel()

    def _start_unload(self, room: DocumentRoom) -> None:
        self._unloads.pop(room.document_id, None)
        task = asyncio.get_running_loop().create_task(self._unload(room))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _unload(self, room: DocumentRoom) -> None:
        if not room.idle or room.closed:
            return
        try:
            await asyncio.wait_for(self.writer.flush(), timeout=10)
            if room.idle:
                await self.store.compact(room.document_id)
            if room.idle and room.steps is not None and room.steps.unsaved:
                await room.steps.snapshot()
        except Exception as exc:  # store trouble: keep the room and try again later
            logger.warning("keeping %r loaded, store not ready: %s", room.document_id, exc)
            self.release(room, bound=False)  # not again at once: after the grace period
            return
        if not room.idle or self.rooms.get(room.document_id) is not room:
            return  # someone joined while we were writing
        del self.rooms[room.document_id]
        self.writer.forget(room.document_id)
        self.store.forget(room.document_id)
        room.close()
        for listener in self.on_unload:
            listener(room)

    async def discard(self, document_id: str) -> None:
        """Unload a room now without writing it (its document is being deleted)."""
        self._cancel_unload(document_id)
        room = self.rooms.pop(document_id, None)
        if room is not None:
            room.deleted = True
            self.writer.forget(document_id)
            room.close()
            for listener in self.on_unload:
                listener(room)

    async def close(self) -> None:
        """Unload everything now (server shutdown); the writer is flushed by the caller."""
        for handle in self._unloads.values():
            handle.cancel()
        self._unloads.clear()
        for loading in list(self._loading.values()):
            loading.cancel()
        for unloading in list(self._unloading):
            unloading.cancel()
        for room in list(self.rooms.values()):
            room.close()
            for listener in self.on_unload:
                listener(room)
        self.rooms.clear()
