"""The ``ChannelBackend`` protocol: where streams, positions and state live, and how
publications reach every instance.

Two implementations:

* ``memory`` (the default; :mod:`captify_ws.channels.memory`) — this process only. History in
  memory; the state of classes with ``durable_state`` also in the SQL store, so after a restart
  the channel continues in a new epoch *with its state*. What it cannot do: reach another
  process, or keep history across a restart.
* ``redis`` (:mod:`captify_ws.channels.redis`) — streams, positions and state in Redis, one
  atomic script per publication (idempotency, epoch, offset, append with a size cap, expiry,
  state merge, fan-out with ``PUBLISH``), so any instance recovers any subscriber.

Fan-out is at most once (Redis Pub/Sub); the hub (:mod:`captify_ws.channels.hub`) detects loss
by offsets and repairs it with :meth:`ChannelBackend.read`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from captify_ws.channels.types import (
    ChannelSnapshot,
    Outgoing,
    Position,
    Published,
    Retention,
    StreamRead,
)

#: ``(channel, offset, epoch, frame)`` for every publication this instance hears, in the
#: stream's order per channel as far as the backend knows it; ``offset`` is ``None`` for an
#: ephemeral one (then ``epoch`` is ``""``).
PublicationCallback = Callable[[str, int | None, str, str], None]


@runtime_checkable
class ChannelBackend(Protocol):
    """Streams, positions and state of channels. Each method states its guarantee."""

    #: ``memory`` or the Redis URL with the password masked
    url: str
    #: set by the hub before :meth:`start`
    on_publication: PublicationCallback
    #: called after the fan-out connection came back (publications may have been lost)
    on_reconnect: Callable[[], None]
    #: whether fan-out can lose publications (the hub then checks positions periodically)
    lossy: bool

    async def start(self) -> None:
        """Connect; raises :class:`~captify_ws.errors.BrokerError` if the backend cannot be
        reached at start (later outages are retried)."""
        ...

    async def stop(self) -> None: ...

    async def publish(self, channel: str, outgoing: Outgoing,
                      retention: Retention) -> Published:
        """Append one publication atomically: answer the idempotency key's earlier result if
        it is known; start a new epoch if the stream was lost; drop it as ``stale`` under the
        version rule; else take the next offset, append with the size cap, refresh expiry,
        merge the state patch, and fan the frame out to every instance (this one included).
        Raises :class:`~captify_ws.errors.BrokerError` when the backend is unreachable (then
        nothing was appended) and :class:`~captify_ws.errors.ChannelError` (1009) when the
        state would exceed its bound."""
        ...

    async def publish_ephemeral(self, channel: str, frame: str) -> None:
        """Fan a frame out to every instance's live subscribers; not stored, no offset, at
        most once."""
        ...

    async def read(self, channel: str, since_offset: int, limit: int,
                   retention: Retention, *, partial: bool = False) -> StreamRead:
        """The position, the first retained offset, and the publications after
        ``since_offset`` — all of them when there are at most ``limit``, else none — read
        atomically. With ``partial`` (paging the history), the first ``limit`` retained
        after ``since_offset`` instead. A channel never published gets its epoch here
        (offset 0)."""
        ...

    async def snapshot(self, channel: str, retention: Retention) -> ChannelSnapshot:
        """The merged state and the position, atomically."""
        ...

    async def positions(self, channels: list[str]) -> dict[str, Position | None]:
        """The current position of each channel (``None``: the channel has none any more),
        in one round trip; nothing is created."""
        ...

    async def listen(self, channel: str) -> None:
        """Hear ``channel``'s publications from now on: when this returns, every publication
        appended afterwards reaches :attr:`on_publication` (unless lost in fan-out, which the
        hub detects by offsets)."""
        ...

    async def unlisten(self, channel: str) -> None: ...

    async def check(self) -> None:
        """Raise :class:`~captify_ws.errors.BrokerError` with the reason if unusable."""
        ...
