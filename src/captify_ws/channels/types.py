"""The channel core's vocabulary: positions, retention, what a backend reads and answers.

A channel is ``class:name``. Its publications form a *stream*: each gets the next dense
``offset`` within the stream's ``epoch`` (Centrifugo's stream positions). An epoch names one
life of the stream; when a backend loses a stream (a Redis restart, a process restart on the
memory backend, expiry) the next one gets a new epoch, and a client's offsets of the old epoch
mean nothing any more. Beside the stream a channel has a *state*: a flat JSON object that each
publication's ``state_patch`` is merged into atomically with its append, so ``(state, offset)``
is always consistent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

JsonValue = Any


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream is: its last ``offset`` (0 before the first publication) and ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a channel class keeps what (Settings give the numbers, with their units)."""

    #: publications kept for recovery (older ones are trimmed; Redis trims whole stream nodes,
    #: so it may keep up to 100 more)
    history_size: int
    #: the history is dropped this many seconds after the channel's last publication
    history_ttl_s: float
    #: the position (epoch, offset) and the state are kept this long after the last
    #: publication; always at least ``history_ttl_s``
    meta_ttl_s: float
    #: the state is also written to the SQL store, so it survives the loss of the backend
    #: (a Redis restart, a process restart on the memory backend)
    durable_state: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A publication on its way to a backend: the ``pub`` frame's pieces around the offset and
    epoch, and the state patch with every value already JSON-encoded (``None`` deletes)."""

    head: str
    tail: str
    state_fields: tuple[tuple[str, str | None], ...] = ()
    #: the patch's ``version``: the publication is dropped unless it is above the state's
    version: float | None = None
    idempotency_key: str | None = None
    #: the publication ends the stream: it is appended, and every later one is refused
    #: (``sealed``) — an agent run's terminal event, stored exactly once
    seal: bool = False


@dataclass(frozen=True, slots=True)
class Published(Position):
    """What a publish answers: the publication's position — or, for a repeat of an
    idempotency key (``duplicate``), the first one's; for a patch not newer than the state's
    ``version`` (``stale``, nothing appended), the channel's current one; for a publication
    after the stream was sealed (``sealed``, nothing appended), the channel's current one.
    Ephemeral publications have no position: ``Published(0, "")``."""

    duplicate: bool = False
    stale: bool = False
    sealed: bool = False


@dataclass(frozen=True, slots=True)
class StreamRead:
    """An atomic read of a stream: its position, and the retained publications after a given
    offset (``(offset, frame)`` ascending; empty when too many were asked for)."""

    position: Position
    publications: tuple[tuple[int, str], ...]
    #: the first offset still retained; ``position.offset + 1`` when none is
    first_offset: int


@dataclass(frozen=True, slots=True)
class ChannelSnapshot:
    """A channel's state as encoded JSON, exactly as of ``position``."""

    position: Position
    state_json: str


#: Builds the state a subscriber gets with ``recovered:false``, for channels whose state is
#: not (only) the merged patches: a user's mailbox read from the store, an agent run folded
#: from its stream. It must read the backend's position *before* its own data (the data then
#: covers at least that position; later publications may repeat some of it, and clients drop
#: them by their own ids).
SnapshotHook = Callable[[str, "SnapshotSource"], Awaitable[ChannelSnapshot]]


class SnapshotSource:
    """What a :data:`SnapshotHook` may read: the backend's snapshot and stream of a channel."""

    def __init__(self, snapshot: Callable[[], Awaitable[ChannelSnapshot]],
                 read: Callable[[int, int], Awaitable[StreamRead]]) -> None:
        self._snapshot = snapshot
        self._read = read

    async def merged_state(self) -> ChannelSnapshot:
        """The merged patches and the position, atomically."""
        return await self._snapshot()

    async def stream(self, since_offset: int, limit: int) -> StreamRead:
        """The first ``limit`` retained publications after ``since_offset`` and the position,
        atomically (page on with the last offset read)."""
        return await self._read(since_offset, limit)


@dataclass(frozen=True)
class ChannelClass:
    """A class of channels (``workflow`` in ``workflow:run-7``), given its meaning by a
    handler: retention, the snapshot, and whether clients may name its channels."""

    name: str
    retention: Retention
    #: the state for ``recovered:false``; default: the merged state patches
    snapshot: SnapshotHook | None = None
    #: who may subscribe, decided by the class itself instead of the configured authorizer
    #: (a user's own mailbox: the identity is the permission); ``None``: the authorizer
    authorize: Callable[[Any, str], bool] | None = None
    #: what the class is for, in errors that name the classes an endpoint serves
    description: str = ""
    #: events that end a channel's stream: the first one is appended and seals it, every
    #: later publication (of any event) is refused as ``sealed`` (on every backend, atomically)
    terminal_events: frozenset[str] = frozenset()
    #: checks a publication before it is encoded, whoever publishes it (Python, HTTP, the
    #: Redis ingest): ``(channel, event, data, state_patch)`` → the state patch to use; raises
    #: ``ChannelError`` to refuse it
    prepare: Callable[[str, str, Any, Any], Any] | None = None
    #: most publications a recovery of this class replays (below the hub's own cap); past it
    #: the subscriber gets the snapshot (``too_far``) — an agent run's compacted text instead
    #: of thousands of tokens
    recovery_max_publications: int | None = None
