"""The ProseMirror step authority of one document (what prosemirror-collab needs centrally).

Steps are ordered by version. A submission for the current version whose steps all apply to
the server's document is appended; one for an older version gets the steps it is missing
instead (the client rebases and resubmits); steps that do not apply are refused.

The log is kept in the store with a compare-and-append on ``(document, version)``: when two
instances share a PostgreSQL store, only one of them can accept steps for a given version;
the other catches up from the store and answers its client "behind". Server-originated steps
carry a change id, stored with the version they were applied at, so a retried call is never
applied twice: on any instance, it is answered with the version it was applied at.

Versions mean one thing everywhere (prosemirror-collab's): the ``version`` of a change is the
document version its first step applies to. A submission names the version it was built on;
an accepted change is announced with the version it was applied at; a duplicate is answered
with the version it was applied at; a submission behind the document gets the current
version, the one to rebuild on.

Steps that name a node or mark type the schema does not have are refused with
``schema_mismatch`` naming them (the editors' schema is not the server's); steps that do not
apply with ``invalid_steps``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prosemirror.model import Fragment, Node, Schema, Slice
from prosemirror.model.resolvedpos import _resolve_cache
from prosemirror.transform import ReplaceAroundStep, ReplaceStep, Step

from captify_ws.errors import InvalidMessage, QuotaExceeded
from captify_ws.rooms.turns import dumps_in_turns
from captify_ws.store.base import APPENDED, CONFLICT, DocumentStore, StepRecord

logger = logging.getLogger("captify_ws.steps")

#: Steps kept (in memory and in the store) behind the latest snapshot, for clients catching up.
KEEP_STEPS: Final = 1000
#: A snapshot of the ProseMirror document is stored every this many steps.
SNAPSHOT_EVERY: Final = 200
#: Estimated bytes of memory per ProseMirror node in the ``prosemirror`` port (measured: a
#: paragraph with a short text is about 1 KB), besides its text.
NODE_COST: Final = 1024


class StepsRefused(InvalidMessage):
    """Steps that cannot be accepted; ``code`` goes into the error message's data."""

    def __init__(self, message: str, code: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.data = {"code": code, **data}


@dataclass(frozen=True)
class Accepted:
    """Steps appended at ``version`` (the version the first one applies to)."""

    version: int
    steps: list[Any]
    client_ids: list[Any]
    change_id: Any = None
    #: the steps' compact JSON texts as stored (``None`` when not at hand): the broadcast
    #: reuses them instead of encoding the steps again (``envelope.encode_steps``)
    texts: list[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Behind:
    """The submission was for an older version: here is what happened since."""

    version: int
    steps: list[Any] = field(default_factory=list)
    client_ids: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Duplicate:
    """This change id was applied before, at ``version``: nothing was done."""

    change_id: Any
    version: int


Outcome = Accepted | Behind | Duplicate


@dataclass(frozen=True)
class StepsResult:
    """What server code's steps did (``Server.broadcast_steps``): the version after them,
    whether they were applied or were a duplicate of applied ones, and whether the document's
    Y.XmlFragment was changed too (``yjs``)."""

    version: int
    applied: bool
    duplicate: bool = False
    yjs: bool = False


def default_schema() -> Schema[Any, Any]:
    """prosemirror-schema-basic with the list nodes, as prosemirror-example-setup builds it."""
    from prosemirror.schema.basic import schema as basic
    from prosemirror.schema.list import add_list_nodes

    return Schema({"nodes": add_list_nodes(basic.spec["nodes"], "paragraph block*", "block"),
                   "marks": basic.spec["marks"]})


def _type_names(step_json: Any) -> tuple[set[str], set[str]]:
    """The node and mark type names a step's JSON uses."""
    nodes: set[str] = set()
    marks: set[str] = set()

    def mark(value: Any) -> None:
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            marks.add(value["type"])

    def node(value: Any) -> None:
        if not isinstance(value, dict):
            return
        if isinstance(value.get("type"), str):
            nodes.add(value["type"])
        for item in value.get("marks") or ():
            mark(item)
        for child in value.get("content") or ():
            node(child)

    if isinstance(step_json, dict):
        piece = step_json.get("slice")
        if isinstance(piece, dict):
            for child in piece.get("content") or ():
                node(child)
        mark(step_json.get("mark"))
    return nodes, marks


def schema_mismatch(what: str, nodes: Iterable[str] = (), marks: Iterable[str] = (),
                    attrs: Iterable[str] = ()) -> StepsRefused:
    """The refusal of content the schema cannot represent, naming what does not fit."""
    named = [*(f"node type {name!r}" for name in sorted(nodes)),
             *(f"mark type {name!r}" for name in sorted(marks)),
             *(f"attribute {name!r}" for name in sorted(attrs))]
    return StepsRefused(f"{what} {', '.join(named) or 'content'} that the document's schema "
                        "cannot represent (--pm-schema)", "schema_mismatch",
                        nodes=sorted(nodes), marks=sorted(marks), attrs=sorted(attrs))


def check_types(schema: Schema[Any, Any], steps_json: Sequence[Any]) -> None:
    """Refuse steps that name node or mark types the schema lacks (``schema_mismatch``)."""
    for index, step_json in enumerate(steps_json):
        nodes, marks = _type_names(step_json)
        unknown_nodes = nodes - set(schema.nodes)
        unknown_marks = marks - set(schema.marks)
        if unknown_nodes or unknown_marks:
            raise schema_mismatch(f"step {index} uses", unknown_nodes, unknown_marks)


def fragment_cost(fragment: Fragment) -> int:
    """Estimated bytes of memory of a ProseMirror fragment (see :data:`NODE_COST`)."""
    total = 0
    for child in fragment.content:
        total += NODE_COST + (2 * len(child.text or "") if child.is_text
                              else fragment_cost(child.content))
    return total


def step_cost(step: Step) -> int:
    """Estimated bytes of memory a step can add to a document: what its slice inserts, or
    the text nodes a mark step can split."""
    if isinstance(step, (ReplaceStep, ReplaceAroundStep)):
        return fragment_cost(step.slice.content)
    return 2 * NODE_COST


def apply_steps(schema: Schema[Any, Any], doc: Node, steps_json: Sequence[Any]) -> Node:
    """``doc`` after the steps; raises :class:`StepsRefused` (``schema_mismatch``,
    ``invalid_steps``)."""
    return _apply(schema, doc, steps_json)[0]


def forget_resolved_positions() -> None:
    """Empty the prosemirror port's cache of resolved positions.

    The port keeps them in a module-level dict keyed by document, to be dropped when the
    document dies (a weak reference); but each cached position holds its document (its path
    starts with it), so no document that ever had a position resolved dies: every version of
    every document a step was applied to stayed in memory (30 steps of 1 MB on one document
    kept 250 MB after it was unloaded, issue 13.6). The cache only saves repeated lookups
    within one change, so it is emptied after each."""
    _resolve_cache.clear()


def _apply(schema: Schema[Any, Any], doc: Node, steps_json: Sequence[Any]) -> tuple[Node, int]:
    """The document after the steps, and their estimated memory cost."""
    try:
        return _apply_each(schema, doc, steps_json)
    finally:
        forget_resolved_positions()


def _apply_each(schema: Schema[Any, Any], doc: Node, steps_json: Sequence[Any]
                ) -> tuple[Node, int]:
    check_types(schema, steps_json)
    cost = 0
    for index, step_json in enumerate(steps_json):
        try:
            step = Step.from_json(schema, step_json)
            result = step.apply(doc)
        except Exception as exc:  # the prosemirror port raises several kinds
            raise StepsRefused(f"step {index} is invalid: {exc}", "invalid_steps") from None
        if result.failed or result.doc is None:
            raise StepsRefused(f"step {index} does not apply: {result.failed}",
                               "invalid_steps")
        doc = result.doc
        cost += step_cost(step)
    return doc, cost


class StepAuthority:
    """The versioned step log of one document. Load with :meth:`load` before use."""

    def __init__(self, document_id: str, schema: Schema[Any, Any],
                 store: DocumentStore) -> None:
        self.document_id = document_id
        self.schema = schema
        self.store = store
        self.doc: Node = schema.top_node_type.create_and_fill()  # type: ignore[assignment]
        self.version = 0
        #: accepted steps still kept, oldest first (versions history_start … version - 1)
        self.history: list[StepRecord] = []
        self.history_start = 0
        self.lock = asyncio.Lock()
        self._since_snapshot = 0
        #: estimated bytes of memory: the document and the kept steps
        self.cost = fragment_cost(self.doc.content)
        self.cost_since_measure = 0
        #: called with the estimated cost of steps before they are accepted; raises
        #: :class:`~captify_ws.errors.QuotaExceeded` to refuse them (the room's quota)
        self.admit: Callable[[int], None] | None = None

    def measure(self) -> int:
        """Recompute :attr:`cost` from the document and the kept steps; O(document)."""
        self.cost = fragment_cost(self.doc.content) + sum(len(r.step) for r in self.history)
        self.cost_since_measure = 0
        return self.cost

    def _charge(self, amount: int) -> None:
        self.cost += amount
        self.cost_since_measure += amount

    async def load(self) -> None:
        log = await self.store.load_steps(self.document_id, 0)
        base = 0
        if log.snapshot is not None:
            base = log.snapshot[0]
            self.doc = Node.from_json(self.schema, json.loads(log.snapshot[1]))
        self.version = base
        self.history = list(log.steps)
        self.history_start = log.steps[0].version if log.steps else base
        for record in log.steps:
            if record.version >= base:
                self._replay(record)
        self.measure()

    def _replay(self, record: StepRecord) -> None:
        if record.version != self.version:
            raise StepsRefused(f"gap in the step log at {self.version}", "corrupt_log")
        self.doc, cost = _apply(self.schema, self.doc, [json.loads(record.step)])
        self._charge(cost + len(record.step))
        self.version += 1

    async def catch_up(self) -> list[StepRecord]:
        """Apply what other instances appended to the shared store since our version."""
        log = await self.store.load_steps(self.document_id, self.version)
        new = [record for record in log.steps if record.version >= self.version]
        for record in new:
            self._replay(record)
            self.history.append(record)
        return new

    def since(self, version: int) -> Behind:
        """The steps after ``version``; refuses with ``history_trimmed`` when forgotten."""
        if version > self.version:
            raise StepsRefused(f"version {version} is ahead of the document ({self.version})",
                               "invalid_version", version=self.version)
        if version < self.history_start:
            raise StepsRefused(f"steps before version {self.history_start} are no longer "
                               "kept; reload the document", "history_trimmed",
                               version=self.version)
        records = self.history[version - self.history_start:]
        return Behind(version, [json.loads(r.step) for r in records],
                      [json.loads(r.client_id) for r in records])

    def apply_remote(self, accepted: Accepted) -> bool:
        """Steps another instance accepted (from the broker); False if we are out of step
        (the next submission catches up from the store)."""
        if accepted.version != self.version:
            return False
        new_doc, cost = _apply(self.schema, self.doc, accepted.steps)
        for offset, (step, client) in enumerate(zip(accepted.steps, accepted.client_ids,
                                                    strict=True)):
            record = StepRecord(accepted.version + offset, json.dumps(step), json.dumps(client))
            self.history.append(record)
            cost += len(record.step)
        self._charge(cost)
        self.doc = new_doc
        self.version += len(accepted.steps)
        return True

    async def duplicate(self, change_id: Any) -> Duplicate | None:
        """The earlier application of ``change_id`` (on any instance), if there was one."""
        if change_id is None:
            return None
        applied_at = await self.store.find_change(self.document_id, json.dumps(change_id))
        return None if applied_at is None else Duplicate(change_id, applied_at)

    async def submit(self, version: int, steps: Sequence[Any], client_id: Any,
                     change_id: Any = None) -> Outcome:
        """Compare-and-append; see the module docstring. Call with :attr:`lock` held.

        A change id applied before is answered :class:`Duplicate` whatever ``version`` says
        (a retry of a request that was applied).
        """
        if not steps:
            raise StepsRefused("no steps", "invalid_steps")
        earlier = await self.duplicate(change_id)
        if earlier is not None:
            return earlier
        if version != self.version:
            # Another instance may have appended meanwhile: answer with the store's version.
            await self.catch_up()
        if version < self.version:
            return self.since(version)
        if version > self.version:
            raise StepsRefused(f"version {version} is ahead of the document ({self.version})",
                               "invalid_version", version=self.version)
        new_doc, cost = _apply(self.schema, self.doc, steps)
        client_text = json.dumps(client_id)
        texts = [json.dumps(step, separators=(",", ":")) for step in steps]
        cost += sum(len(text) for text in texts)
        if self.admit is not None:
            try:
                self.admit(cost)
            except QuotaExceeded as exc:
                raise StepsRefused(exc.message, "quota_exceeded",
                                   quota=exc.data["quota"]) from None
        result = await self.store.append_steps(
            self.document_id, version, texts, client_text,
            None if change_id is None else json.dumps(change_id))
        if result == CONFLICT:
            # Another instance took this version: catch up, and tell the client it is behind.
            await self.catch_up()
            return self.since(version)
        if result != APPENDED:  # another instance applied this change id meanwhile
            earlier = await self.duplicate(change_id)
            return earlier if earlier is not None else Duplicate(change_id, version)
        self.doc = new_doc
        self._charge(cost)
        for offset, text in enumerate(texts):
            self.history.append(StepRecord(version + offset, text, client_text))
        self.version += len(steps)
        self._since_snapshot += len(steps)
        if self._since_snapshot >= SNAPSHOT_EVERY:
            await self.snapshot()
        return Accepted(version, list(steps), [client_id] * len(steps), change_id, texts)

    @property
    def unsaved(self) -> bool:
        """Steps since the last snapshot (loading replays them; a snapshot makes it quick)."""
        return self._since_snapshot > 0

    async def snapshot(self) -> None:
        """Store the document at the current version and trim the kept history."""
        self._since_snapshot = 0
        version, tree = self.version, self.doc.to_json()
        # A large document's JSON is encoded in turns of the event loop (rooms/turns.py).
        await self.store.save_step_snapshot(
            self.document_id, version, await dumps_in_turns(tree), KEEP_STEPS)
        keep_from = max(self.history_start, self.version - KEEP_STEPS)
        forgotten = self.history[:keep_from - self.history_start]
        self.history = self.history[keep_from - self.history_start:]
        self.history_start = keep_from
        self.cost -= sum(len(record.step) for record in forgotten)

    def replace_all_step(self, doc: Node) -> dict[str, Any]:
        """A step that replaces the whole document content with ``doc``'s (used to fold edits
        made through Yjs into the step log)."""
        step = ReplaceStep(0, self.doc.content.size, Slice(doc.content, 0, 0))
        return dict(step.to_json())
