"""Presence (Yjs awareness) of one document: who is here, batched so it scales.

The rules of y-protocols ``awareness.js`` decide which entry wins (a higher clock; an equal clock
with a ``null`` state removes). On top of them, what the measurements in shared/bench asked for:

* only *changes* are broadcast, batched per document every ``awareness_flush_ms``: real
  ``WebsocketProvider`` clients send back every awareness update they apply, so relaying each
  message as it comes turns N clients into N² messages. Echoes carry no newer clock and stop here.
* renewals (a newer clock, the same state: Yjs clients renew every 15 s) are forwarded at most
  every ``awareness_renewal_s`` seconds, which keeps each state fresher than the 30 s after which
  clients drop a silent peer, and which also reaches the renewing client itself, so a client
  alone in a document still hears from the server before its 30 s silence timer fires.
* the server has no awareness state of its own.

JSON clients (string clientIDs) are mapped to numeric awareness ids by :func:`awareness_id_for`;
their clocks are kept by the server, which renews them for Yjs clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from captify_ws.errors import InvalidMessage
from captify_ws.protocol.ywebsocket import AwarenessEntry, parse_awareness_state

#: Yjs clients drop a peer's state that has not been renewed for this long (y-protocols).
OUTDATED_TIMEOUT_S: Final = 30.0

_HASHED_ID_BASE: Final = 1 << 32
_HASHED_ID_SPAN: Final = (1 << 53) - (1 << 32)


def awareness_id_for(client_id: str) -> int:
    """The numeric awareness id that stands for a JSON client's string clientID.

    A decimal clientID below 2^53 is used as it is (so a JSON client that passes its Yjs
    ``doc.clientID`` keeps it). Any other string hashes into [2^32, 2^53): Yjs picks its own
    client ids below 2^32, so a hashed id never collides with a real Yjs client.
    """
    if client_id.isdecimal() and client_id.isascii():
        value = int(client_id)
        if value < 1 << 53:
            return value
    digest = hashlib.blake2b(client_id.encode("utf-8"), digest_size=8).digest()
    return _HASHED_ID_BASE + int.from_bytes(digest, "big") % _HASHED_ID_SPAN


class PresenceState:
    """One client's presence: its clock, its JSON text, and the connection that set it."""

    __slots__ = ("client_id", "clock", "json_client_id", "owner", "remote", "state",
                 "updated_at", "value")

    def __init__(self, client_id: int, clock: int, state: str, owner: object,
                 json_client_id: str | None, value: Any = None, *, remote: bool = False) -> None:
        self.client_id = client_id
        self.clock = clock
        self.state = state
        self.owner = owner
        #: the string clientID when a JSON client owns this state
        self.json_client_id = json_client_id
        self.value = value
        #: owned by a client of another instance (which keeps its clock)
        self.remote = remote
        self.updated_at = time.monotonic()

    def entry(self) -> AwarenessEntry:
        return AwarenessEntry(self.client_id, self.clock, self.state)


class Change:
    """One entry of a presence broadcast."""

    __slots__ = ("entry", "json_client_id", "owner", "renewal", "state")

    def __init__(self, entry: AwarenessEntry, state: PresenceState | None, owner: object,
                 json_client_id: str | None, *, renewal: bool = False) -> None:
        self.entry = entry
        #: the current state, ``None`` when the entry announces a removal
        self.state = state
        self.owner = owner
        self.json_client_id = json_client_id
        #: only the clock moved; JSON clients are not told
        self.renewal = renewal


class Presence:
    """The awareness states of one document, and the timers that batch their broadcast.

    ``broadcast(changes)`` is called with every batch of changes (new, changed, removed states
    and due renewals); the room turns them into frames for its members.
    """

    def __init__(self, broadcast: Callable[[list[Change]], None], *, flush_interval: float,
                 renewal_interval: float) -> None:
        self._broadcast = broadcast
        self._flush_interval = flush_interval
        self._renewal_interval = renewal_interval
        self.states: dict[int, PresenceState] = {}
        self._changed: dict[int, Change] = {}
        self._renewed: dict[int, None] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._renewal_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.states)

    # -- input -----------------------------------------------------------------------------

    def apply(self, entries: Iterable[AwarenessEntry], owner: object) -> None:
        """Apply a y-websocket awareness update sent by ``owner``.

        Raises :class:`~captify_ws.errors.InvalidMessage` before changing anything if a newer
        entry's state is not JSON.
        """
        accepted: list[AwarenessEntry] = []
        for entry in entries:
            current = self.states.get(entry.client_id)
            if current is None:
                # y-protocols compares with clock 0 for an unknown client: 0 itself loses.
                if not entry.removed and entry.clock > 0:
                    accepted.append(entry)
            elif current.clock < entry.clock or (current.clock == entry.clock and entry.removed):
                accepted.append(entry)
        for entry in accepted:
            if not entry.removed:
                parse_awareness_state(entry.state)  # never relay what clients cannot parse
        for entry in accepted:
            self._accept(entry, owner, None)

    def apply_remote(self, entries: list[tuple[AwarenessEntry, str | None]],
                     owner: object) -> None:
        """Apply presence changes that another instance's clients made (already validated
        there). Renewals are forwarded to local clients at once: they were batched already."""
        for entry, json_client_id in entries:
            current = self.states.get(entry.client_id)
            if current is None:
                if entry.removed or entry.clock <= 0:
                    continue
            elif not (current.clock < entry.clock
                      or (current.clock == entry.clock and entry.removed)):
                continue
            if not entry.removed:
                try:
                    parse_awareness_state(entry.state)
                except InvalidMessage:
                    continue
            self._accept(entry, owner, json_client_id, remote=True)

    def set_json_state(self, client_id: str, value: Any, owner: object) -> None:
        """A JSON client's presence (``None`` withdraws it); the server keeps its clock."""
        awareness_id = awareness_id_for(client_id)
        current = self.states.get(awareness_id)
        clock = 1 if current is None else current.clock + 1
        if value is None:
            if current is not None:
                self._accept(AwarenessEntry(awareness_id, current.clock, "null"), owner, client_id)
            return
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self._accept(AwarenessEntry(awareness_id, clock, text), owner, client_id, value)

    def remove_owned_by(self, owner: object) -> None:
        """Remove and announce exactly the states ``owner`` controlled (it left)."""
        for state in [s for s in self.states.values() if s.owner is owner]:
            self._accept(AwarenessEntry(state.client_id, state.clock, "null"), owner,
                         state.json_client_id)

    def _accept(self, entry: AwarenessEntry, owner: object, json_client_id: str | None,
                value: Any = None, *, remote: bool = False) -> None:
        current = self.states.get(entry.client_id)
        if entry.removed:
            if current is None:
                return
            del self.states[entry.client_id]
            self._renewed.pop(entry.client_id, None)
            self._changed[entry.client_id] = Change(entry, None, current.owner,
                                                    current.json_client_id)
        elif current is not None and current.state == entry.state:
            # A renewal: newer clock, same state. Forward later, with other renewals.
            current.clock = entry.clock
            current.owner = owner
            current.remote = remote
            current.updated_at = time.monotonic()
            if remote:
                # Another instance batched this renewal already; pass it on with the next flush.
                if entry.client_id not in self._changed:
                    self._changed[entry.client_id] = Change(entry, current, owner,
                                                            current.json_client_id, renewal=True)
            else:
                if entry.client_id not in self._changed:
                    self._renewed[entry.client_id] = None
                self._schedule_renewal()
                return
        else:
            state = PresenceState(entry.client_id, entry.clock, entry.state, owner,
                                  json_client_id, value, remote=remote)
            self.states[entry.client_id] = state
            self._renewed.pop(entry.client_id, None)
            self._changed[entry.client_id] = Change(entry, state, owner, json_client_id)
            self._schedule_renewal()
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self._flush_interval, self.flush)

    # -- output ----------------------------------------------------------------------------

    def snapshot(self) -> list[PresenceState]:
        """Every current state, for a client that joins or asks (query-awareness)."""
        return list(self.states.values())

    def flush(self) -> None:
        """Broadcast the batched changes now."""
        self._flush_handle = None
        if not self._changed:
            return
        changed, self._changed = self._changed, {}
        self._broadcast(list(changed.values()))

    def _schedule_renewal(self) -> None:
        if self._renewal_handle is None:
            self._renewal_handle = asyncio.get_running_loop().call_later(
                self._renewal_interval, self._renew)

    def _renew(self) -> None:
        """Forward due renewals, renew JSON clients' states, drop states nobody renewed."""
        self._renewal_handle = None
        now = time.monotonic()
        changes: list[Change] = []
        for client_id in list(self.states):
            state = self.states[client_id]
            if state.json_client_id is not None and not state.remote:
                state.clock += 1  # the server renews on behalf of its JSON clients
                state.updated_at = now
                changes.append(Change(state.entry(), state, state.owner, state.json_client_id,
                                      renewal=True))
            elif client_id in self._renewed:
                changes.append(Change(state.entry(), state, state.owner, None, renewal=True))
            elif now - state.updated_at > OUTDATED_TIMEOUT_S:
                del self.states[client_id]
                changes.append(Change(AwarenessEntry(client_id, state.clock, "null"), None,
                                      state.owner, None))
        self._renewed.clear()
        if changes:
            self._broadcast(changes)
        if self.states:
            self._schedule_renewal()

    def close(self) -> None:
        """Stop the timers (the room is unloading)."""
        for handle in (self._flush_handle, self._renewal_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._renewal_handle = None
        self._changed.clear()
        self._renewed.clear()
        self.states.clear()
