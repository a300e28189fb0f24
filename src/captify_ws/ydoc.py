"""YDoc: a pycrdt ``Doc`` that ends up holding what Yjs clients hold, and what it costs.

**Integration as Yjs does it.** Yjs splits a string item at a position between the two halves
of a surrogate pair (an emoji, a CJK extension character…) when an update refers to it, and
replaces both halves with U+FFFD. yrs, under pycrdt, keeps the whole character on the left side
of such a split and miscounts the item lengths, so what it encodes afterwards decodes to a
different text in Yjs (docs/yjs-interop.md has the reproduction). :meth:`YDoc.apply` therefore
looks at every update that could do this (the document holds a surrogate pair, or the update
brings one): when it refers to a position inside a pair, the document is rebuilt from its own
encoding with that item cut as Yjs cuts it (``protocol/ysplit.split_strings``), and the update
is applied with its own strings cut the same way. yrs then never splits a pair itself, so the
document, and everything encoded from it (sync step 2, ``synced``, ``GET``, the store's
snapshots, anti-entropy), decodes in Yjs to what the clients hold. An update that refers to
structs the document does not hold yet (stored, relayed or diffed before them) is held here
until they arrive, so that yrs never integrates pending structs on its own. Documents with no
character outside the BMP take the plain path: a read of the update's structs (``scan``).

**Cost.** :attr:`YDoc.cost` estimates, in bytes, the memory the document takes in this process
(the estimate: ``protocol/ycost.py``); :meth:`YDoc.measure` recomputes it from the document
itself (after edits are merged and deleted content collected), which the quota does before
refusing anything.

"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from pycrdt import Doc, get_update, merge_updates

from captify_ws.errors import InvalidMessage
from captify_ws.protocol import ysplit, yupdate
from captify_ws.protocol.ycost import ASTRAL_COST, BYTE_COST, STRUCT_COST

logger = logging.getLogger("captify_ws.ydoc")

T = TypeVar("T")

#: A 4-byte UTF-8 sequence: a character outside the BMP (two UTF-16 code units).
_ASTRAL_SEQUENCE: Final = re.compile(rb"[\xf0-\xf4][\x80-\xbf]{3}")
#: The lead bytes of such a sequence, each looked for with memchr first: 2 ms for a 10 MB
#: update without any, where the regular expression takes 140 ms (reloading a large document
#: held the event loop that long).
_ASTRAL_LEADS: Final = tuple(bytes((lead,)) for lead in range(0xF0, 0xF5))


def holds_astral(update: bytes) -> bool:
    """Whether ``update`` holds a 4-byte UTF-8 sequence anywhere."""
    return any(lead in update for lead in _ASTRAL_LEADS) and \
        _ASTRAL_SEQUENCE.search(update) is not None


def _checked(call: Callable[[], T]) -> T:
    """Run a pycrdt call on client bytes, raising :class:`InvalidMessage` for anything yrs
    refuses."""
    try:
        return call()
    except Exception as exc:  # pycrdt raises ValueError; a Rust panic surfaces as another type
        raise InvalidMessage(f"not a valid Yjs update ({exc})") from None
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise InvalidMessage("not a valid Yjs update") from None


def apply_checked(doc: Doc[Any], update: bytes) -> None:
    """``doc.apply_update``, raising :class:`InvalidMessage` for anything Yjs cannot apply."""
    _checked(lambda: doc.apply_update(update))


def read_state_vector(state_vector: bytes) -> dict[int, int]:
    """A Yjs state vector (``varuint(n) {varuint client, varuint clock}*``) as a dict."""
    reader = yupdate.Reader(state_vector)
    result = {}
    for _ in range(reader.uint()):
        client = reader.uint()
        result[client] = reader.uint()
    return result


#: Yjs' encodings of an empty document: its state vector, and the update that holds nothing
EMPTY_STATE_VECTOR: Final = b"\x00"
EMPTY_UPDATE: Final = b"\x00\x00"


class YDoc:
    """One Yjs document in this process. See the module docstring.

    The pycrdt ``Doc`` is made on first use: a document nobody has written to (an idle
    viewer's, ~1.7 KB of Python objects per ``Doc``) answers the empty encodings without one.
    """

    __slots__ = ("_astral", "_clocks", "_doc", "_held", "_held_count", "_held_seq", "_woken",
                 "cost", "cost_since_measure", "rebuilds")

    def __init__(self) -> None:
        self._doc: Doc[Any] | None = None
        #: estimated bytes of memory (see the module docstring)
        self.cost = 0
        #: cost added since the last :meth:`measure`
        self.cost_since_measure = 0
        #: client → clocks of the low surrogates of the surrogate pairs the document holds
        self._astral: dict[int, set[int]] = {}
        self.rebuilds = 0
        #: client → clock: what the document holds of each client (its state vector), kept
        #: from the updates integrated; never ahead of the document's own
        self._clocks: dict[int, int] = {}
        #: updates waiting for structs they refer to (see :meth:`apply`), by the client whose
        #: clock they wait for: (that clock, arrival number, update, its scan)
        self._held: dict[int, list[tuple[int, int, bytes, yupdate.UpdateScan]]] = {}
        self._woken: list[tuple[int, int, bytes, yupdate.UpdateScan]] = []
        self._held_count = 0
        self._held_seq = 0

    @property
    def doc(self) -> Doc[Any]:
        """The pycrdt document (made now if it was not yet)."""
        if self._doc is None:
            self._doc = Doc()
        return self._doc

    @doc.setter
    def doc(self, doc: Doc[Any]) -> None:
        self._doc = doc

    # -- cost ------------------------------------------------------------------------------

    def _charge(self, amount: int) -> None:
        self.cost += amount
        self.cost_since_measure += amount

    def measure(self) -> int:
        """Recompute :attr:`cost` from the document's own encoding; O(document)."""
        encoded = self.doc.get_update()
        structs = yupdate.scan(encoded).structs
        astral = sum(len(clocks) for clocks in self._astral.values())
        self.cost = BYTE_COST * len(encoded) + STRUCT_COST * structs + ASTRAL_COST * astral
        self.cost_since_measure = 0
        return self.cost

    # -- integration -----------------------------------------------------------------------

    def needs_scan(self, update: bytes) -> bool:
        """Whether integrating ``update`` could split a surrogate pair (then :meth:`apply`
        reads it first)."""
        return bool(self._astral) or holds_astral(update)

    def apply(self, update: bytes, cost: int | None = None) -> None:
        """Integrate one update as Yjs would; raises :class:`InvalidMessage` (nothing
        changed) if Yjs cannot apply it. ``cost``: the update's
        :func:`~captify_ws.protocol.ycost.cost_of`, if known.

        An update that refers to structs the document does not have yet is held here, whole,
        and integrated once they arrive (Yjs holds such structs as pending too): yrs would
        integrate it on its own later, without the cuts above (docs/yjs-interop.md).
        """
        if self._doc is None and update == EMPTY_UPDATE:
            return  # nothing to integrate (a new client's answer to the server's sync step 1)
        found = yupdate.scan(update)
        if cost is None:
            cost = BYTE_COST * len(update) + STRUCT_COST * found.structs
        missing = self._missing(found)
        if missing is not None:
            # Server code may have edited the document without telling: read its own state.
            self._clocks = read_state_vector(self.doc.get_state())
            self._wake_all()
            missing = self._missing(found)
        if missing is not None:
            self._hold(missing, update, found)
            self._charge(cost)
        else:
            self._integrate(update, found, cost)
        self._integrate_woken()

    def _integrate(self, update: bytes, found: yupdate.UpdateScan, cost: int) -> None:
        """Integrate an update whose dependencies are all in the document."""
        if not self._astral and not found.astral:
            apply_checked(self.doc, update)
            self._advance(found)
            self._charge(cost)
            return
        hits = self._hits(found)
        if hits:
            self._apply_cut(update, hits, cost)
            self._advance(found)
            return
        apply_checked(self.doc, update)
        self._advance(found)
        self._record(found.astral)
        self._charge(cost + ASTRAL_COST * len(found.astral))

    @property
    def held(self) -> int:
        """Updates waiting for structs they refer to (see :meth:`apply`)."""
        return self._held_count

    def _missing(self, found: yupdate.UpdateScan) -> yupdate.Point | None:
        """A point ``found`` refers to (it needs every clock of the client below it) that is
        neither in the document nor in the update itself; ``None`` when there is none."""
        clocks = self._clocks
        ends: dict[int, int] = {}
        for client, first, end in found.runs:
            if first > clocks.get(client, 0):
                return client, first
            ends[client] = end
        for client, clock in found.gaps:
            if clock > clocks.get(client, 0):
                return client, clock
        for client, clock in found.needs:
            if clock > clocks.get(client, 0) and clock > ends.get(client, 0):
                return client, clock
        return None

    def _hold(self, missing: yupdate.Point, update: bytes, found: yupdate.UpdateScan) -> None:
        self._held_seq += 1
        self._held.setdefault(missing[0], []).append((missing[1], self._held_seq, update, found))
        self._held_count += 1

    def _advance(self, found: yupdate.UpdateScan) -> None:
        """The update's structs are in the document: move the clocks kept here, and wake the
        held updates that waited for them."""
        clocks = self._clocks
        for client, _first, end in found.runs:
            if end > clocks.get(client, 0):
                clocks[client] = end
                waiting = self._held.get(client)
                if waiting:
                    woken = [entry for entry in waiting if entry[0] <= end]
                    if woken:
                        self._held[client] = [entry for entry in waiting if entry[0] > end]
                        self._woken.extend(woken)

    def _wake_all(self) -> None:
        for waiting in self._held.values():
            self._woken.extend(waiting)
        self._held.clear()

    def _integrate_woken(self) -> None:
        """Integrate the held updates whose dependencies arrived, in arrival order; each may
        wake others."""
        while self._woken:
            self._woken.sort(key=lambda entry: entry[1])
            _, sequence, update, found = self._woken.pop(0)
            self._held_count -= 1
            missing = self._missing(found)
            if missing is not None:  # it waits for something else too
                self._held_count += 1
                self._held.setdefault(missing[0], []).append(
                    (missing[1], sequence, update, found))
                continue
            try:
                self._integrate(update, found, 0)
            except InvalidMessage as exc:
                logger.warning("dropped a held update Yjs cannot apply: %s", exc)

    def apply_batch(self, updates: list[bytes]) -> bool:
        """Integrate several updates in one yrs transaction when that is safe (no surrogate
        pair involved, nothing held, each update's dependencies there); ``False`` (nothing
        done) when they must go one by one through :meth:`apply`. Raises
        :class:`InvalidMessage` if the merged update does not apply."""
        if self._held_count or any(self.needs_scan(update) for update in updates):
            return False
        scans = [yupdate.scan(update) for update in updates]
        before = self._clocks
        ends: dict[int, int] = {}  # what the batch brings, up to the update being checked

        def have(client: int) -> int:
            return max(before.get(client, 0), ends.get(client, 0))

        for found in scans:
            if any(first > have(client) for client, first, _ in found.runs) or any(
                    clock > have(client) for client, clock in found.gaps):
                return False
            for client, _first, end in found.runs:
                ends[client] = max(ends.get(client, 0), end)
            if any(clock > have(client) for client, clock in found.needs):
                return False
        cost = sum(BYTE_COST * len(update) + STRUCT_COST * found.structs
                   for update, found in zip(updates, scans, strict=True))
        merged = _checked(lambda: merge_updates(*updates))
        apply_checked(self.doc, merged)
        for found in scans:
            self._advance(found)
        self._charge(cost)
        return True

    def record_local(self, update: bytes) -> None:
        """An update the document made itself (server code editing it): account for it."""
        found = yupdate.scan(update)
        self._advance(found)
        self._record(found.astral)
        self._charge(BYTE_COST * len(update) + STRUCT_COST * found.structs)

    def _record(self, points: Iterable[yupdate.Point]) -> None:
        for client, clock in points:
            self._astral.setdefault(client, set()).add(clock)

    def _hits(self, found: yupdate.UpdateScan) -> dict[int, set[int]]:
        """Points at which integrating the update would split a surrogate pair."""
        own: dict[int, set[int]] = {}
        for client, clock in found.astral:
            own.setdefault(client, set()).add(clock)
        known = self._astral
        hits: dict[int, set[int]] = {}
        for client, clock in found.splits:
            if clock in known.get(client, ()) or clock in own.get(client, ()):
                hits.setdefault(client, set()).add(clock)
        if own:
            # A struct we have the beginning of already is cut where our copy ends.
            state = read_state_vector(self.doc.get_state())
            for client, first, end in found.runs:
                clock = state.get(client, 0)
                if first < clock < end and clock in own.get(client, ()):
                    hits.setdefault(client, set()).add(clock)
        return hits

    def _apply_cut(self, update: bytes, hits: dict[int, set[int]], cost: int) -> None:
        """Cut the items at ``hits`` as Yjs does, in the document and in ``update``, then
        integrate the update."""
        encoded = self.doc.get_update()
        cut_state, cuts = ysplit.split_strings(encoded, hits)
        cut_update, _ = ysplit.split_strings(update, hits)
        if cuts:
            # Rebuilt beside the current document: if the update is refused, nothing changed.
            rebuilt: Doc[Any] = Doc(client_id=self.doc.client_id)
            apply_checked(rebuilt, cut_state)
            apply_checked(rebuilt, cut_update)
            self.doc = rebuilt
            self.rebuilds += 1
            logger.debug("rebuilt a document to cut %d surrogate pairs as Yjs does", cuts)
        else:
            apply_checked(self.doc, cut_update)
        for client, clocks in hits.items():
            known = self._astral.get(client)
            if known is not None:
                known.difference_update(clocks)
                if not known:
                    del self._astral[client]
        found = yupdate.scan(cut_update)
        self._record(point for point in found.astral
                     if point[1] not in hits.get(point[0], ()))
        self._charge(cost)

    # -- encoding --------------------------------------------------------------------------

    def encode(self, state_vector: bytes | None = None) -> bytes:
        """The document as one update, or what ``state_vector`` lacks — as Yjs would encode
        it, also when the state vector ends inside a surrogate pair."""
        if self._doc is None and (state_vector is None or state_vector == EMPTY_STATE_VECTOR):
            return EMPTY_UPDATE
        if state_vector is None:
            return self.doc.get_update()
        if self._astral:
            try:
                clocks = read_state_vector(state_vector)
            except InvalidMessage:
                raise InvalidMessage("not a valid Yjs state vector") from None
            inside = {client: {clock} for client, clock in clocks.items()
                      if clock in self._astral.get(client, ())}
            if inside:
                cut, _ = ysplit.split_strings(self.doc.get_update(), inside)
                return get_update(cut, state_vector)
        try:
            return self.doc.get_update(state_vector)
        except ValueError:
            raise InvalidMessage("not a valid Yjs state vector") from None

    def state_vector(self) -> bytes:
        if self._doc is None:
            return EMPTY_STATE_VECTOR
        return self.doc.get_state()


def merge_faithfully(snapshot: bytes | None, updates: Iterable[bytes]) -> bytes:
    """A snapshot and updates as one update (garbage-collected), integrated as Yjs would."""
    ydoc = YDoc()
    if snapshot:
        ydoc.apply(snapshot)
    for update in updates:
        ydoc.apply(update)
    return ydoc.encode()
