"""The pieces of presence: numeric ids for JSON clients, what is kept per state and per id,
the entries of a broadcast, and how entries are cut into frames (see ``presence.py``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final

from captify_ws.errors import MessageTooBig
from captify_ws.protocol.ywebsocket import AwarenessEntry

#: Yjs clients drop a peer's state that has not been renewed for this long (y-protocols).
OUTDATED_TIMEOUT_S: Final = 30.0
#: How long the clock of a released id is remembered: longer than a Yjs client takes to renew
#: its state (every 15 s, checked every 3 s) after it lost its connection.
TOMBSTONE_S: Final = 2 * OUTDATED_TIMEOUT_S
#: Most tombstones one document keeps (the oldest go first).
MAX_TOMBSTONES: Final = 10_000
#: Bytes an awareness entry costs in a frame beyond its state (client id, clock, lengths).
ENTRY_OVERHEAD: Final = 32

_HASHED_ID_BASE: Final = 1 << 32
_HASHED_ID_SPAN: Final = (1 << 53) - (1 << 32)


class PresenceOverBound(MessageTooBig):
    """A connection would control more presence states, or bytes of them, than allowed
    (close 1009; nothing of the message is applied)."""


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


def chunked(entries: Iterable[AwarenessEntry], budget: int) -> Iterator[list[AwarenessEntry]]:
    """Entries in groups whose encoded awareness message stays under ``budget`` bytes (each
    state is at most ``max_awareness_size``, which is far below any message limit)."""
    group: list[AwarenessEntry] = []
    size = 0
    for entry in entries:
        cost = len(entry.state.encode("utf-8")) + ENTRY_OVERHEAD
        if group and size + cost > budget:
            yield group
            group, size = [], 0
        group.append(entry)
        size += cost
    if group:
        yield group


class PresenceState:
    """One client's presence: its clock as announced, its JSON text, the connection that set
    it."""

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


class Slot:
    """What the document remembers about one client id: who controls it (``None``: nobody,
    a tombstone), the owner's own last clock, and the last clock announced to everyone."""

    __slots__ = ("announced", "client_clock", "owner", "released_at")

    def __init__(self) -> None:
        self.owner: object | None = None
        self.client_clock = 0
        self.announced = 0
        self.released_at = 0.0


class Change:
    """One entry of a presence broadcast."""

    __slots__ = ("entry", "json_client_id", "owner", "released", "renewal", "silent", "state")

    def __init__(self, entry: AwarenessEntry, state: PresenceState | None, owner: object,
                 json_client_id: str | None, *, renewal: bool = False, released: bool = False,
                 silent: bool = False) -> None:
        self.entry = entry
        #: the current state, ``None`` when the entry announces a removal
        self.state = state
        self.owner = owner
        self.json_client_id = json_client_id
        #: only the clock moved; JSON clients are not told
        self.renewal = renewal
        #: the owner gave up the id (it left); other instances release it too
        self.released = released
        #: nothing for clients (an id released without a state): for other instances only
        self.silent = silent
