"""YDoc: a pycrdt ``Doc`` that ends up holding what Yjs clients hold, and what it costs.

**Integration as Yjs does it.** Yjs splits a string item at a position between the two halves
of a surrogate pair (an emoji, a CJK extension character…) when an update refers to it, and
replaces both halves with U+FFFD. yrs, under pycrdt, keeps the whole character on the left side
of such a split and miscounts the item lengths, so what it encodes afterwards decodes to a
different text in Yjs (docs/yjs-interop.md has the reproduction). :meth:`YDoc.apply` therefore
looks at every update that could do this (the document holds a surrogate pair, or the update
brings one): when it refers to a position inside a pair, the document is rebuilt from its own
encoding with that item cut as Yjs cuts it (``protocol/yupdate.split_strings``), and the update
is applied with its own strings cut the same way. yrs then never splits a pair itself, so the
document, and everything encoded from it (sync step 2, ``synced``, ``GET``, the store's
snapshots, anti-entropy), decodes in Yjs to what the clients hold. Documents with no character
outside the BMP take the plain path: one regular-expression search over the update's bytes.

**Cost.** :attr:`YDoc.cost` estimates, in bytes, the memory the document takes in this process:
yrs keeps about 50–470 bytes per struct (measured: text runs ~50, formatted text ~200, map
entries ~400, XML elements ~470) besides the content, and a room caches two encodings of the
whole document for joiners. Each applied update adds ``BYTE_COST × len(update) + STRUCT_COST ×
structs``; :meth:`YDoc.measure` recomputes it from the document itself (after edits are merged
and deleted content collected), which the quota does before refusing anything.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from pycrdt import Doc, get_update, merge_updates

from captify_ws.errors import InvalidMessage
from captify_ws.protocol import yupdate

logger = logging.getLogger("captify_ws.ydoc")

T = TypeVar("T")

#: Estimated bytes of memory per byte of Yjs update: the content in yrs, plus the full state
#: and the sync-step-2 frame a room caches for fresh joiners.
BYTE_COST: Final = 3
#: Estimated bytes of memory per struct (item or GC range) in yrs; the largest measured.
STRUCT_COST: Final = 480
#: Bytes of bookkeeping per surrogate pair the document holds (a Python int in a set).
ASTRAL_COST: Final = 64

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


def header_structs(update: bytes) -> int | None:
    """The number of structs of an update with at most one client's structs, read from its
    header without reading the structs; ``None`` for more clients (or a malformed header)."""
    if len(update) < 2:
        return None
    if update[0] == 0:
        return 0
    if update[0] != 1:
        return None
    if update[1] < 0x80:
        return update[1]
    value = shift = 0
    for byte in update[1:11]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    return None


def cost_from_header(head: bytes, size: int) -> int | None:
    """The estimated memory cost (as :meth:`YDoc.cost_of`) of a one-client update of ``size``
    bytes whose first bytes are ``head``; ``None`` when the header does not tell."""
    structs = header_structs(head)
    return None if structs is None else BYTE_COST * size + STRUCT_COST * structs


def read_state_vector(state_vector: bytes) -> dict[int, int]:
    """A Yjs state vector (``varuint(n) {varuint client, varuint clock}*``) as a dict."""
    reader = yupdate._Reader(state_vector)
    result = {}
    for _ in range(reader.uint()):
        client = reader.uint()
        result[client] = reader.uint()
    return result


class YDoc:
    """One Yjs document in this process. See the module docstring."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        #: estimated bytes of memory (see the module docstring)
        self.cost = 0
        #: cost added since the last :meth:`measure`
        self.cost_since_measure = 0
        #: client → clocks of the low surrogates of the surrogate pairs the document holds
        self._astral: dict[int, set[int]] = {}
        self.rebuilds = 0

    @property
    def has_astral(self) -> bool:
        return bool(self._astral)

    # -- cost ------------------------------------------------------------------------------

    @staticmethod
    def cost_of(update: bytes) -> int:
        """The estimated memory cost of integrating ``update`` (cheap for one client's update;
        raises :class:`InvalidMessage` if it is not an update)."""
        structs = header_structs(update)
        if structs is None:
            structs = yupdate.scan(update).structs
        return BYTE_COST * len(update) + STRUCT_COST * structs

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
        changed) if Yjs cannot apply it. ``cost``: :meth:`cost_of` the update, if known."""
        if not self.needs_scan(update):
            if cost is None:
                cost = self.cost_of(update)
            apply_checked(self.doc, update)
            self._charge(cost)
            return
        found = yupdate.scan(update)
        hits = self._hits(found)
        if hits:
            self._apply_cut(update, hits)
            return
        apply_checked(self.doc, update)
        self._record(found.astral)
        self._charge(BYTE_COST * len(update) + STRUCT_COST * found.structs
                     + ASTRAL_COST * len(found.astral))

    def apply_batch(self, updates: list[bytes]) -> bool:
        """Integrate several updates in one yrs transaction when that is safe (no surrogate
        pair involved); ``False`` (nothing done) when they must go one by one through
        :meth:`apply`. Raises :class:`InvalidMessage` if the merged update does not apply."""
        if any(self.needs_scan(update) for update in updates):
            return False
        cost = sum(self.cost_of(update) for update in updates)
        merged = _checked(lambda: merge_updates(*updates))
        apply_checked(self.doc, merged)
        self._charge(cost)
        return True

    def record_local(self, update: bytes) -> None:
        """An update the document made itself (server code editing it): account for it."""
        found = yupdate.scan(update)
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

    def _apply_cut(self, update: bytes, hits: dict[int, set[int]]) -> None:
        """Cut the items at ``hits`` as Yjs does, in the document and in ``update``, then
        integrate the update."""
        encoded = self.doc.get_update()
        cut_state, cuts = yupdate.split_strings(encoded, hits)
        cut_update, _ = yupdate.split_strings(update, hits)
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
        self._charge(BYTE_COST * len(update) + STRUCT_COST * found.structs)

    # -- encoding --------------------------------------------------------------------------

    def encode(self, state_vector: bytes | None = None) -> bytes:
        """The document as one update, or what ``state_vector`` lacks — as Yjs would encode
        it, also when the state vector ends inside a surrogate pair."""
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
                cut, _ = yupdate.split_strings(self.doc.get_update(), inside)
                return get_update(cut, state_vector)
        try:
            return self.doc.get_update(state_vector)
        except ValueError:
            raise InvalidMessage("not a valid Yjs state vector") from None

    def state_vector(self) -> bytes:
        return self.doc.get_state()


def merge_faithfully(snapshot: bytes | None, updates: Iterable[bytes]) -> bytes:
    """A snapshot and updates as one update (garbage-collected), integrated as Yjs would."""
    ydoc = YDoc()
    if snapshot:
        ydoc.apply(snapshot)
    for update in updates:
        ydoc.apply(update)
    return ydoc.encode()
