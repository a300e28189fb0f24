"""The in-process channel backend: the default, for one process.

Streams live in this process's memory, each a bounded deque of ``(offset, frame)``. A
publication is appended and handed to the hub synchronously, so on this backend subscribers
never see a gap. What it cannot do: reach another process (``--workers`` needs ``redis``), or
keep history across a restart. Classes with ``durable_state`` keep their state in the SQL store
too, so after a restart such a channel starts a new epoch with its last state: subscribers
that come back are told ``recovered:false, reason:"epoch"`` and get that state.

Idle channels are forgotten ``meta_ttl_s`` after their last publication, and channels never
published ``UNPUBLISHED_TTL_S`` after they were first read (a sweep every 30 s), like the
Redis keys' expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from captify_ws.channels import state as channel_state
from captify_ws.channels.backend import PublicationCallback
from captify_ws.channels.types import (
    ChannelSnapshot,
    Outgoing,
    Position,
    Published,
    Retention,
    StreamRead,
)
from captify_ws.channelstore.base import ChannelStore
from captify_ws.errors import ChannelError, CloseCode
from captify_ws.protocol.channels import encode_pub

#: Seconds between sweeps of idle channels.
SWEEP_S = 30.0
#: A channel only ever read (subscribed), never published, is forgotten after this many
#: seconds: a subscriber's own reads must not make the server keep a position for 30 days.
UNPUBLISHED_TTL_S = 600.0
#: Idempotency keys remembered per channel (the oldest are forgotten first).
MAX_KEYS_PER_CHANNEL = 10_000


def new_epoch() -> str:
    """A fresh epoch: 8 random URL-safe characters."""
    return secrets.token_urlsafe(6)


def _ignore(channel: str, offset: int | None, epoch: str, frame: str) -> None:
    return None


def _nothing() -> None:
    return None


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    entries: deque[tuple[int, str]] = field(default_factory=deque)
    state: dict[str, str] = field(default_factory=dict)
    last_publish: float = field(default_factory=time.monotonic)
    #: idempotency key → (position answered, expires at)
    seen: dict[str, tuple[Published, float]] = field(default_factory=dict)
    #: a terminal publication was appended: nothing more is
    sealed: bool = False


class MemoryBackend:
    """See the module docstring."""

    url = "memory"
    lossy = False

    def __init__(self, store: ChannelStore, *, state_max_keys: int = 1000,
                 idempotency_window_s: float = 300.0) -> None:
        self._store = store
        self._state_max_keys = state_max_keys
        self._idempotency_window_s = idempotency_window_s
        self._streams: dict[str, _Stream] = {}
        self._meta_ttl: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[_Stream]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_publication: PublicationCallback = _ignore
        self.on_reconnect: Callable[[], None] = _nothing
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                               name="captify-channel-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def check(self) -> None:
        return None

    async def positions(self, channels: list[str]) -> dict[str, Position | None]:
        out: dict[str, Position | None] = {}
        for channel in channels:
            stream = self._streams.get(channel)
            out[channel] = Position(stream.top, stream.epoch) if stream is not None else None
        return out

    async def listen(self, channel: str) -> None:
        return None

    async def unlisten(self, channel: str) -> None:
        return None

    # -- streams ---------------------------------------------------------------------------

    async def _stream(self, channel: str, retention: Retention) -> _Stream:
        """The channel's stream, created (with its durable state loaded) on first use."""
        stream = self._streams.get(channel)
        if stream is not None:
            self._expire(stream, retention)
            return stream
        loading = self._loading.get(channel)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[_Stream] = asyncio.get_running_loop().create_future()
        self._loading[channel] = future
        try:
            stream = _Stream(new_epoch())
            if retention.durable_state:
                stream.state = await self._store.load_state(channel) or {}
            self._streams[channel] = stream
            self._meta_ttl[channel] = retention.meta_ttl_s
            future.set_result(stream)
            return stream
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._loading[channel]

    @staticmethod
    def _expire(stream: _Stream, retention: Retention) -> None:
        if stream.entries and time.monotonic() - stream.last_publish > retention.history_ttl_s:
            stream.entries.clear()

    async def publish(self, channel: str, outgoing: Outgoing,
                      retention: Retention) -> Published:
        stream = await self._stream(channel, retention)
        now = time.monotonic()
        key = outgoing.idempotency_key
        if key is not None:
            seen = stream.seen.get(key)
            if seen is not None and seen[1] > now:
                return Published(seen[0].offset, seen[0].epoch, duplicate=True)
        if stream.sealed:
            return Published(stream.top, stream.epoch, sealed=True)
        if channel_state.is_stale(stream.state.get("version"), outgoing.version):
            return Published(stream.top, stream.epoch, stale=True)
        fields = outgoing.state_fields
        if fields and len(stream.state) + channel_state.new_keys(stream.state, fields) > \
                self._state_max_keys:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                               f"the channel's state would have more than "
                               f"{self._state_max_keys} keys")
        stream.top += 1
        offset = stream.top
        frame = encode_pub(outgoing.head, offset, stream.epoch, outgoing.tail)
        stream.entries.append((offset, frame))
        while len(stream.entries) > retention.history_size:
            stream.entries.popleft()
        stream.last_publish = now
        stream.sealed = outgoing.seal
        self._meta_ttl[channel] = retention.meta_ttl_s
        channel_state.merge(stream.state, fields)
        published = Published(offset, stream.epoch)
        if key is not None:
            if len(stream.seen) >= MAX_KEYS_PER_CHANNEL:
                stream.seen = {k: v for k, v in stream.seen.items() if v[1] > now}
                while len(stream.seen) >= MAX_KEYS_PER_CHANNEL:  # the oldest go first
                    del stream.seen[next(iter(stream.seen))]
            stream.seen[key] = (published, now + self._idempotency_window_s)
        self.on_publication(channel, offset, stream.epoch, frame)
        if retention.durable_state and fields:
            # Written after delivery, before the publisher's answer; one writer per channel
            # at a time so that a later state never loses to an earlier one.
            lock = self._locks.setdefault(channel, asyncio.Lock())
            async with lock:
                await self._store.save_state(channel, stream.epoch, offset, dict(stream.state))
        return published

    async def publish_ephemeral(self, channel: str, frame: str) -> None:
        self.on_publication(channel, None, "", frame)

    async def read(self, channel: str, since_offset: int, limit: int,
                   retention: Retention, *, partial: bool = False) -> StreamRead:
        stream = await self._stream(channel, retention)
        entries = stream.entries
        first = entries[0][0] if entries else stream.top + 1
        publications: tuple[tuple[int, str], ...] = ()
        if partial:
            if since_offset < stream.top and limit > 0:
                skip = max(since_offset + 1, first) - first
                publications = tuple(itertools.islice(entries, skip, skip + limit))
        elif since_offset < stream.top and stream.top - since_offset <= limit and \
                first <= since_offset + 1:
            publications = tuple(itertools.islice(entries, since_offset + 1 - first, None))
        return StreamRead(Position(stream.top, stream.epoch), publications, first)

    async def snapshot(self, channel: str, retention: Retention) -> ChannelSnapshot:
        stream = await self._stream(channel, retention)
        return ChannelSnapshot(Position(stream.top, stream.epoch),
                               channel_state.state_json(stream.state))

    # -- expiry ----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Forget channels idle for longer than their ``meta_ttl_s``; returns how many."""
        now = time.monotonic()
        idle = [channel for channel, stream in self._streams.items()
                if now - stream.last_publish > (self._meta_ttl.get(channel, 0.0) if stream.top
                                                else UNPUBLISHED_TTL_S)]
        for channel in idle:
            del self._streams[channel]
            self._meta_ttl.pop(channel, None)
            self._locks.pop(channel, None)
        return len(idle)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep()
