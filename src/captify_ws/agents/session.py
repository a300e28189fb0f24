"""Agents that co-edit documents like people: ``async with agent_session(document_id,
name="Assistant", color="#7c3aed") as agent``.

* Attribution: each session edits through its own Yjs replica with its own client id, so every
  character it inserts carries that id in the document (what Yjs editors attribute by); the
  sessions of a document — name, color, client id, owner, run, start and end — are stored
  (``store/agent_sessions.py``) and listed by :meth:`AgentSessions.list` (``GET
  /api/v1/agent/sessions?document_id=``) on every instance, after restarts too.
* Presence: an awareness state ``{"user": {"name", "color"}, "agent": true, "cursor": {"anchor",
  "head"}}`` under the session's client id, the caret as Yjs relative positions (JSON, as
  y-prosemirror and y-codemirror send them), so y-websocket, Hocuspocus and JSON clients see the
  agent as a person and its caret follows concurrent edits. It is removed when the session ends
  (and, since it lives in this process, when the process dies — no ghost).
* Edits: :meth:`AgentSession.insert_text` streams text in chunks at a *relative* position: each
  chunk goes right after the previous one wherever people typed meanwhile, so the agent's text
  is contiguous. :meth:`AgentSession.replace` replaces a :class:`Range` read earlier; the range
  is rebased on concurrent edits (relative positions), and refused (:class:`StaleContext`)
  when the text it targets changed since it was read — the stale-context guard.
* Undo of a run: :meth:`AgentSession.revert` is a forward change every client sees: it puts
  back what the session deleted (at the relative positions where it was) and deletes exactly
  the items the session's client id inserted (a Yjs delete set of that client), whatever people
  did around them.
* ProseMirror documents: :meth:`AgentSession.apply_steps` goes through the step authority,
  refused (``StaleVersion``) when computed against an older version.
* A snapshot before each run: :attr:`AgentSession.before` is the document (one Yjs update)
  as it was when the session started, also stored as a named version (stores with history;
  ``info.before_version``) to diff with or restore.

Positions given to the API are in characters (code points) of the text; the Yjs text is the
root ``Y.Text`` named by ``field`` (``"text"``, what the y-websocket tests and many editors use).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycrdt import Assoc, Doc, StickyIndex, Text

from captify_ws.errors import CaptifyError
from captify_ws.protocol import statevector
from captify_ws.protocol.ywebsocket import AwarenessEntry
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Origin
from captify_ws.rooms.units import pycrdt_length

if TYPE_CHECKING:
    from captify_ws.agents.host import AgentHost
    from captify_ws.agents.registry import AgentSessions
    from captify_ws.rooms.steps import StepsResult

logger = logging.getLogger("captify_ws.agents")

#: Seconds between renewals of the agent's awareness state (y-protocols renews every 15 s).
RENEW_PRESENCE_S = 15.0


class StaleContext(CaptifyError):
    """An edit computed on text that changed since it was read: nothing was changed."""


@dataclass(frozen=True)
class Range:
    """Text the agent read, with relative positions of its ends (rebased on edits)."""

    start: StickyIndex
    end: StickyIndex
    text: str


@dataclass
class SessionInfo:
    """One session as the attribution list shows it (times in ms since the Unix epoch)."""

    session_id: str
    document_id: str
    name: str
    color: str
    client_id: int
    started_at: int
    ended_at: int | None = None
    reverted: bool = False
    #: the stored version holding the document as it was when the session started
    before_version: int | None = None
    #: the principal the agent acts for, and its run (``agent:{run_id}``), if given
    owner: str | None = None
    run_id: str | None = None


def _encode_var_uint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def delete_set_update(client_id: int, clock: int) -> bytes:
    """A Yjs update (v1) with no structs and a delete set covering clocks ``[0, clock)`` of
    ``client_id``: applied, it deletes exactly what that client inserted."""
    out = bytearray([0])  # no struct groups
    _encode_var_uint(1, out)
    _encode_var_uint(client_id, out)
    _encode_var_uint(1, out)
    _encode_var_uint(0, out)
    _encode_var_uint(clock, out)
    return bytes(out)


async def _chunks(text: str | AsyncIterable[str], size: int) -> AsyncIterator[str]:
    if isinstance(text, str):
        for start in range(0, len(text), size):
            yield text[start:start + size]
    else:
        async for piece in text:
            yield piece


class AgentSession:
    """See the module docstring."""

    def __init__(self, server: AgentHost, document_id: str, *, name: str = "Assistant",
                 color: str = "#7c3aed", field: str = "text", chunk_chars: int = 16,
                 owner: str | None = None, run_id: str | None = None,
                 registry: AgentSessions | None = None) -> None:
        self.server = server
        self.document_id = document_id
        self.field = field
        self.chunk_chars = chunk_chars
        # Yjs picks client ids below 2^32; a random one collides with odds of clients/2^32.
        self.client_id = secrets.randbits(31) + (1 << 31)
        self.info = SessionInfo(secrets.token_hex(8), document_id, name, color, self.client_id,
                                int(time.time() * 1000), owner=owner, run_id=run_id)
        self.registry = registry
        self.origin = Origin("server", label=f"agent:{name}")
        self.replica: Doc[Any] = Doc(client_id=self.client_id)
        self.text: Text = self.replica.get(field, type=Text)
        self.before = b""
        self._room: DocumentRoom | None = None
        self._clock = 0
        self._caret: StickyIndex | None = None
        #: (where, text) the session deleted, to put back on revert
        self._deleted: list[tuple[StickyIndex | None, str]] = []
        self._steps = 0
        self._renewal: asyncio.Task[None] | None = None

    @property
    def room(self) -> DocumentRoom:
        if self._room is None:
            raise CaptifyError("the agent session is not open (use `async with`)")
        return self._room

    async def __aenter__(self) -> AgentSession:
        room = await self.server.rooms.acquire(self.document_id)
        room.holds += 1
        self._room = room
        self.before = room.encode_state()
        self.replica.apply_update(self.before)
        await self._keep_before()
        if self.registry is not None:
            try:
                await self.registry.record(self.info)
            except BaseException:
                await self.close(record=False)
                raise
        self._set_presence(None)
        self._renewal = asyncio.get_running_loop().create_task(self._renew_presence())
        return self

    async def _keep_before(self) -> None:
        """Store the document as it is now as a named version (stores with history), so a
        run can be compared with, or restored to, what it started from."""
        history = getattr(self.server, "history", None)
        if history is None or history.store is None or not str(self.text):
            return
        try:
            info = await history.create_version(
                self.document_id, f"before agent {self.info.name} ({self.info.session_id})",
                f"agent:{self.info.name}")
        except CaptifyError as exc:  # HistoryError, StoreError: the session goes on
            logger.warning("no version before agent session %s: %s", self.info.session_id,
                           exc)
            return
        self.info.before_version = info.number

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _record(self) -> None:
        """Store the session's record as it is now (a store error is logged: the edits and
        presence already happened)."""
        if self.registry is None:
            return
        try:
            await self.registry.record(self.info)
        except CaptifyError as exc:
            logger.error("agent session %s not recorded: %s", self.info.session_id, exc)

    async def close(self, *, record: bool = True) -> None:
        """End the session: its presence disappears; its edits stay (see :meth:`revert`)."""
        room = self._room
        if room is None:
            return
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        room.presence.remove_owned_by(self)
        self.info.ended_at = int(time.time() * 1000)
        self._room = None
        room.holds -= 1
        self.server.rooms.release(room)
        await self.server.writer.flush()
        if record:
            await self._record()

    # -- reading ---------------------------------------------------------------------------

    def _sync(self) -> None:
        """Bring the replica up to the room's document."""
        missing = self.room.encode_state(self.replica.get_state())
        self.replica.apply_update(missing)

    def read(self) -> str:
        """The text now."""
        self._sync()
        return str(self.text)

    def range(self, start: int, end: int) -> Range:
        """The text between two character positions, to replace later (see
        :meth:`replace`)."""
        text = self.read()
        start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
        return Range(self._sticky(text, start, Assoc.AFTER),
                     self._sticky(text, end, Assoc.BEFORE), text[start:end])

    def _sticky(self, text: str, index: int, assoc: Assoc) -> StickyIndex:
        # pycrdt cannot bind "after" at the very end, nor "before" at the very start.
        if index >= len(text):
            assoc = Assoc.BEFORE
        elif index == 0:
            assoc = Assoc.AFTER
        return self.text.sticky_index(pycrdt_length(text[:index]), assoc)

    def _index(self, sticky: StickyIndex) -> int:
        """A relative position as a character position in the replica's text now."""
        position = sticky.get_index()
        encoded = str(self.text).encode("utf-8")
        return len(encoded[:position].decode("utf-8", "ignore"))

    # -- editing ---------------------------------------------------------------------------

    def _edit(self, change: Any) -> None:
        """Run ``change`` on the replica in one transaction and apply its update to the room
        as this session (stored, sent to every client)."""
        updates: list[bytes] = []
        subscription = self.replica.observe(lambda event: updates.append(event.update))
        try:
            with self.replica.transaction():
                change()
        finally:
            self.replica.unobserve(subscription)
        for update in updates:
            self.room.apply_update(update, self.origin)
        self._clock = statevector.decode(self.replica.get_state()).get(self.client_id, 0)

    async def insert_text(self, anchor: int | StickyIndex, text: str | AsyncIterable[str], *,
                          chunk_chars: int | None = None) -> None:
        """Insert ``text`` at ``anchor`` (a character position now, or a relative position):
        a string in chunks of ``chunk_chars``, or each piece of an async iterable as it comes
        (a model's stream). Each chunk lands right after the previous one however the text
        moved meanwhile; the caret follows."""
        current = self.read()
        where = anchor if isinstance(anchor, StickyIndex) else \
            self._sticky(current, max(0, min(anchor, len(current))), Assoc.BEFORE)
        async for chunk in _chunks(text, chunk_chars or self.chunk_chars):
            if not chunk:
                continue
            self._sync()
            index = self._index(where)
            now = str(self.text)

            def put(index: int = index, chunk: str = chunk, now: str = now) -> None:
                self.text.insert(pycrdt_length(now[:index]), chunk)
            self._edit(put)
            where = self._sticky(str(self.text), index + len(chunk), Assoc.BEFORE)
            self._caret = where
            self._set_presence(where)
            await self.server.writer.flush()

    async def replace(self, target: Range, content: str) -> None:
        """Replace the text of ``target`` with ``content``; raises :class:`StaleContext` (and
        changes nothing) when that text changed since ``target`` was read."""
        self._sync()
        start, end = self._index(target.start), self._index(target.end)
        now = str(self.text)
        if now[start:end] != target.text:
            raise StaleContext(f"the range changed since it was read: {target.text!r} is now "
                               f"{now[start:end]!r}")

        theirs = self._not_ours(target)

        def swap() -> None:
            begin = pycrdt_length(now[:start])
            del self.text[begin:begin + pycrdt_length(target.text)]
            if content:
                self.text.insert(begin, content)
        self._edit(swap)
        left = self._sticky(str(self.text), start, Assoc.BEFORE) if start > 0 else None
        if theirs:
            self._deleted.append((left, theirs))
        self._caret = self._sticky(str(self.text), start + len(content), Assoc.BEFORE)
        self._set_presence(self._caret)
        await self.server.writer.flush()

    async def apply_steps(self, steps: list[Any], version: int) -> StepsResult:
        """ProseMirror steps computed against ``version`` of a ProseMirror document, through
        its step authority (every editor and Yjs binding gets them). The stale-context guard
        for ProseMirror documents: raises :class:`~captify_ws.errors.StaleVersion` (nothing
        applied) when the document moved past ``version``; the agent rebases and retries, as
        prosemirror-collab does. Change ids are ``agent:<session_id>:<n>`` (attribution in the
        step log); a retried call is applied once."""
        self._steps += 1
        return await self.server.broadcast_steps(
            self.document_id, steps, f"agent:{self.info.session_id}:{self._steps}", version)

    def _not_ours(self, target: Range) -> str:
        """The text of ``target`` that this session did not insert itself (what a revert
        must put back): the range read in a copy of the document without our inserts."""
        if not self._clock:
            return target.text
        scratch: Doc[Any] = Doc()
        scratch.apply_update(self.replica.get_update())
        scratch.apply_update(delete_set_update(self.client_id, self._clock))
        text = scratch.get(self.field, type=Text)
        encoded = str(text).encode("utf-8")
        start = StickyIndex.from_json(target.start.to_json(), text).get_index()
        end = StickyIndex.from_json(target.end.to_json(), text).get_index()
        return encoded[start:max(start, end)].decode("utf-8", "ignore")

    async def revert(self) -> None:
        """Undo this session as a forward change: put back what it deleted, then delete
        exactly what its client id inserted before that."""
        self._sync()
        inserted = self._clock  # the restored text below is this client's too: kept
        for left, removed in reversed(self._deleted):
            now = str(self.text)
            index = self._index(left) if left is not None else 0

            def restore(index: int = index, removed: str = removed, now: str = now) -> None:
                self.text.insert(pycrdt_length(now[:index]), removed)
            self._edit(restore)
        self._deleted.clear()
        if inserted:
            self.room.apply_update(delete_set_update(self.client_id, inserted), self.origin)
        self._sync()
        self.info.reverted = True
        self._caret = None
        self._set_presence(None)
        await self.server.writer.flush()
        await self._record()

    async def _renew_presence(self) -> None:
        """Renew the awareness state as Yjs clients do (every 15 s; peers drop a state not
        renewed for 30 s)."""
        while True:
            await asyncio.sleep(RENEW_PRESENCE_S)
            if self._room is not None:
                self._set_presence(self._caret)

    # -- presence --------------------------------------------------------------------------

    def _set_presence(self, caret: StickyIndex | None) -> None:
        cursor = None
        if caret is not None:
            position = caret.to_json()
            cursor = {"anchor": position, "head": position}
        state = {"user": {"name": self.info.name, "color": self.info.color}, "agent": True,
                 "cursor": cursor}
        current = self.room.presence.states.get(self.client_id)
        clock = 1 if current is None else current.clock + 1
        self.room.presence.apply(
            [AwarenessEntry(self.client_id, clock,
                            json.dumps(state, separators=(",", ":")))], self)
