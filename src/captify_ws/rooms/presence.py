"""Presence (Yjs awareness) of one document: who is here, who controls what, batched so it
scales.

The rules of y-protocols ``awareness.js`` decide which entry is newer (a higher clock; an equal
clock with a ``null`` state removes). On top of them:

* **Ownership** (issue 12.3). The first connection whose entry for a client id is accepted
  controls that id until it leaves: an entry for an id controlled by another live connection
  (local, or of another instance) is ignored and counted (metric
  ``captify_presence_ignored_total{reason="foreign"}``), removals included. Without this, any
  member could set or remove anyone's presence, and the victim's own provider would adopt a
  forged state as its local state (y-protocols applies a newer entry for its own id).
* **Announced clocks** (issue 12.4). The server keeps, per id, the last clock it announced,
  also after a removal (a tombstone, kept :data:`TOMBSTONE_S`). y-protocols clients remember the
  clock of a removal and ignore a state that is not newer, so a provider that reconnects with
  the clock it left with would stay invisible until its next renewal (~15-20 s). The server
  announces every accepted change with a clock above the last it announced for that id
  (``max(client clock, announced + 1)``); the owner's provider adopts that clock from the echo.
* **Bounds** (issue 13.7): each connection controls at most ``max_states`` ids and
  ``max_bytes`` bytes of states (else :class:`PresenceOverBound`, close 1009, nothing changed);
  frames are cut by :func:`chunked` so that no presence frame exceeds the message limit.
* only *changes* are broadcast, batched per document every ``awareness_flush_ms``: real
  ``WebsocketProvider`` clients send back every awareness update they apply, so relaying each
  message as it comes turns N clients into N² messages. Echoes carry no newer clock and stop here.
* renewals (a newer clock, the same state: Yjs clients renew every 15 s) are forwarded at most
  every ``awareness_renewal_s`` seconds, which keeps each state fresher than the 30 s after which
  clients drop a silent peer.
* the server has no awareness state of its own.

JSON clients (string clientIDs) are mapped to numeric awareness ids by :func:`awareness_id_for`;
their clocks are kept by the server, which renews them for Yjs clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from captify_ws.errors import InvalidMessage
from captify_ws.metrics import Stats
from captify_ws.protocol.ywebsocket import AwarenessEntry, parse_awareness_state
from captify_ws.rooms.presence_entries import (
    MAX_TOMBSTONES,
    OUTDATED_TIMEOUT_S,
    TOMBSTONE_S,
    Change,
    PresenceOverBound,
    PresenceState,
    Slot,
    awareness_id_for,
    chunked,
)

__all__ = ["Change", "Presence", "PresenceOverBound", "PresenceState", "awareness_id_for",
           "chunked"]

class Presence:
    """The awareness states of one document, who controls each id, and the timers that batch
    their broadcast.

    ``broadcast(changes)`` is called with every batch of changes (new, changed, removed states
    and due renewals); the room turns them into frames for its members.
    """

    __slots__ = ("_broadcast", "_changed", "_flush_handle", "_flush_interval", "_owned",
                 "_renewal_handle", "_renewal_interval", "_renewed", "_tombstones", "max_bytes",
                 "max_states", "slots", "states", "stats")

    def __init__(self, broadcast: Callable[[list[Change]], None], *, flush_interval: float,
                 renewal_interval: float, max_states: int = 0, max_bytes: int = 0,
                 stats: Stats | None = None) -> None:
        self._broadcast = broadcast
        self._flush_interval = flush_interval
        self._renewal_interval = renewal_interval
        #: per connection: most ids controlled, most bytes of states (0: no bound)
        self.max_states = max_states
        self.max_bytes = max_bytes
        self.stats = stats if stats is not None else Stats()
        self.states: dict[int, PresenceState] = {}
        self.slots: dict[int, Slot] = {}
        self._owned: dict[object, set[int]] = {}
        #: released ids → when, oldest first
        self._tombstones: dict[int, float] = {}
        self._changed: dict[int, Change] = {}
        self._renewed: dict[int, None] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._renewal_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.states)

    def controller(self, client_id: int) -> object | None:
        """The owner that controls ``client_id`` now, if any."""
        slot = self.slots.get(client_id)
        return slot.owner if slot is not None else None

    def owners(self) -> list[object]:
        """Every owner that controls an id now."""
        return list(self._owned)

    def owned_by(self, owner: object) -> set[int]:
        """The ids ``owner`` controls (a new set)."""
        return set(self._owned.get(owner, ()))

    # -- input -----------------------------------------------------------------------------

    def _ignore(self, reason: str, count: int = 1) -> None:
        ignored = self.stats.presence_ignored
        ignored[reason] = ignored.get(reason, 0) + count

    def _newer(self, slot: Slot | None, entry: AwarenessEntry, owner: object) -> bool:
        """Whether ``owner``'s ``entry`` changes anything, by y-protocols' rule on the owner's
        own clocks (a released id is free: its next owner starts afresh)."""
        if slot is None or slot.owner != owner:
            # y-protocols compares with clock 0 for an unknown client: 0 itself loses.
            return not entry.removed and entry.clock > 0
        return slot.client_clock < entry.clock or (
            slot.client_clock == entry.clock and entry.removed
            and entry.client_id in self.states)

    def apply(self, entries: Iterable[AwarenessEntry], owner: object) -> None:
        """Apply a y-websocket / Hocuspocus awareness update sent by ``owner``.

        Entries for ids another live connection controls are ignored (and counted). Raises
        :class:`~captify_ws.errors.InvalidMessage` if an accepted entry's state is not JSON and
        :class:`PresenceOverBound` if ``owner`` would pass its bounds, before changing anything.
        """
        accepted: dict[int, AwarenessEntry] = {}
        foreign = 0
        for entry in entries:
            slot = self.slots.get(entry.client_id)
            if slot is not None and slot.owner is not None and slot.owner != owner:
                # Providers send back what they apply (echoes at the announced clock): only
                # an entry that would have changed something is an attempt.
                foreign += entry.clock > slot.announced
            elif self._newer(slot, entry, owner):
                accepted[entry.client_id] = entry
        if foreign:
            self._ignore("foreign", foreign)
        if not accepted:
            return
        for entry in accepted.values():
            if not entry.removed:
                parse_awareness_state(entry.state)  # never relay what clients cannot parse
        self._check_bounds(owner, accepted)
        for entry in accepted.values():
            self._accept(entry, owner, None)

    def _check_bounds(self, owner: object, accepted: dict[int, AwarenessEntry]) -> None:
        owned = self._owned.get(owner, set())
        ids = owned | accepted.keys()
        if self.max_states and len(ids) > self.max_states:
            self._ignore("bound", len(accepted))
            raise PresenceOverBound(f"presence: a connection may control {self.max_states} "
                                    f"client ids (this one asked for {len(ids)})")
        if self.max_bytes:
            size = 0
            for client_id in ids:
                entry = accepted.get(client_id)
                if entry is not None:
                    size += 0 if entry.removed else len(entry.state)
                elif (state := self.states.get(client_id)) is not None:
                    size += len(state.state)
            if size > self.max_bytes:
                self._ignore("bound", len(accepted))
                raise PresenceOverBound(f"presence: a connection may hold {self.max_bytes} "
                                        f"bytes of states (this one asked for {size})")

    def apply_remote(self, entries: Iterable[tuple[AwarenessEntry, str | None, bool]],
                     owner: object, is_local: Callable[[object], bool]) -> None:
        """Apply presence changes that a connection of another instance made (validated and
        announced there: the clocks are announced clocks). ``owner`` stands for that remote
        connection; ``is_local(o)`` tells this instance's owners apart. An entry for an id a
        local connection controls is ignored (and counted); between two remote owners the
        newer clock wins (a client that moved between instances). ``released``: the remote
        owner gave the id up."""
        for entry, json_client_id, released in entries:
            slot = self.slots.get(entry.client_id)
            if slot is not None and slot.owner is not None and slot.owner != owner and (
                    is_local(slot.owner) or entry.removed or released):
                if entry.clock > slot.announced:
                    self._ignore("foreign")
                continue
            current = self.states.get(entry.client_id)
            announced = slot.announced if slot is not None else 0
            newer = announced < entry.clock or (announced == entry.clock and entry.removed
                                                and current is not None)
            if newer and not entry.removed:
                try:
                    parse_awareness_state(entry.state)
                except InvalidMessage:
                    self._ignore("invalid")  # counted, as every ignored entry is
                    continue
            if newer:
                self._accept(entry, owner, json_client_id, remote=True)
            if released:
                self._release(entry.client_id, owner)

    def set_json_state(self, client_id: str, value: Any, owner: object) -> bool:
        """A JSON client's presence (``None`` withdraws it); the server keeps its clock.
        Returns ``False`` (and counts it) when another live connection controls the id."""
        awareness_id = awareness_id_for(client_id)
        slot = self.slots.get(awareness_id)
        if slot is not None and slot.owner is not None and slot.owner != owner:
            self._ignore("foreign")
            return False
        clock = (slot.announced if slot is not None else 0) + 1
        if value is None:
            if awareness_id in self.states:
                self._accept(AwarenessEntry(awareness_id, clock, "null"), owner, client_id)
            return True
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self._accept(AwarenessEntry(awareness_id, clock, text), owner, client_id, value)
        return True

    def remove_owned_by(self, owner: object) -> None:
        """``owner`` left: remove and announce the states it controlled, and free its ids."""
        for client_id in list(self._owned.get(owner, ())):
            state = self.states.get(client_id)
            slot = self.slots[client_id]
            if state is not None:
                self._accept(AwarenessEntry(client_id, slot.client_clock, "null"), owner,
                             state.json_client_id, released=True)
            elif (change := self._changed.get(client_id)) is not None:
                change.released = True  # its removal waits for the flush: say it there
            else:
                self._changed[client_id] = Change(
                    AwarenessEntry(client_id, slot.announced, "null"), None, owner, None,
                    released=True, silent=True)
                self._schedule_flush()
            self._release(client_id, owner)

    def _release(self, client_id: int, owner: object) -> None:
        slot = self.slots.get(client_id)
        if slot is None or slot.owner != owner:
            return
        slot.owner = None
        slot.released_at = time.monotonic()
        owned = self._owned.get(owner)
        if owned is not None:
            owned.discard(client_id)
            if not owned:
                del self._owned[owner]
        self._tombstones.pop(client_id, None)
        self._tombstones[client_id] = slot.released_at
        self._expire_tombstones()

    def _expire_tombstones(self) -> None:
        """Forget released ids older than :data:`TOMBSTONE_S`, and past
        :data:`MAX_TOMBSTONES` the oldest (amortised O(1): they are kept in release order)."""
        horizon = time.monotonic() - TOMBSTONE_S
        while self._tombstones:
            client_id, released_at = next(iter(self._tombstones.items()))
            if released_at > horizon and len(self._tombstones) <= MAX_TOMBSTONES:
                break
            del self._tombstones[client_id]
            slot = self.slots.get(client_id)
            if slot is not None and slot.owner is None and client_id not in self.states:
                del self.slots[client_id]

    def _accept(self, entry: AwarenessEntry, owner: object, json_client_id: str | None,
                value: Any = None, *, remote: bool = False, released: bool = False) -> None:
        slot = self.slots.get(entry.client_id)
        if slot is None:
            slot = self.slots[entry.client_id] = Slot()
        if slot.owner != owner:
            if slot.owner is not None:  # a client that moved between two other instances
                self._owned.get(slot.owner, set()).discard(entry.client_id)
            slot.owner = owner
            slot.client_clock = 0
            self._tombstones.pop(entry.client_id, None)
            self._owned.setdefault(owner, set()).add(entry.client_id)
        current = self.states.get(entry.client_id)
        if remote:
            clock = entry.clock  # announced by the owner's instance
        elif entry.removed and entry.clock <= slot.client_clock:
            clock = slot.announced  # y-protocols' equal-clock removal, at the announced clock
        else:
            clock = max(entry.clock, slot.announced + 1)
        slot.client_clock = max(slot.client_clock, entry.clock)
        slot.announced = max(slot.announced, clock)
        entry = AwarenessEntry(entry.client_id, clock, entry.state)
        if entry.removed:
            if current is None:
                return
            del self.states[entry.client_id]
            self._renewed.pop(entry.client_id, None)
            self._changed[entry.client_id] = Change(entry, None, current.owner,
                                                    current.json_client_id, released=released)
        elif current is not None and current.state == entry.state:
            # A renewal: newer clock, same state. Forward later, with other renewals.
            current.clock = clock
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
            state = PresenceState(entry.client_id, clock, entry.state, owner,
                                  json_client_id, value, remote=remote)
            self.states[entry.client_id] = state
            self._renewed.pop(entry.client_id, None)
            self._changed[entry.client_id] = Change(entry, state, owner, json_client_id)
            self._schedule_renewal()
        self._schedule_flush()

    def _schedule_flush(self) -> None:
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
            slot = self.slots[client_id]
            if state.json_client_id is not None and not state.remote:
                state.clock = slot.announced = slot.client_clock = slot.announced + 1
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
        self._expire_tombstones()
        if changes:
            self._broadcast(changes)
        if self.states:
            self._schedule_renewal()

    def detach(self) -> None:
        """Forget the room's broadcast (the room is gone): nothing is sent from now on."""
        self._broadcast = _nothing

    def close(self) -> None:
        """Stop the timers (the room is unloading)."""
        for handle in (self._flush_handle, self._renewal_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._renewal_handle = None
        self._changed.clear()
        self._renewed.clear()
        self.states.clear()
        self.slots.clear()
        self._owned.clear()
        self._tombstones.clear()


def _nothing(changes: list[Change]) -> None:
    """The broadcast of a presence whose room is gone."""
