"""The channel hub: one per server. Publishes through the backend, keeps one *feed* per channel
that has local subscribers, and delivers each publication to them in offset order.

Delivery (the hot path): a publication arrives from the backend as its finished ``pub`` frame;
it is wrapped once in a :class:`~captify_ws.connection.PreparedFrame` and the same bytes are
written to every live subscriber in a plain loop — no per-recipient encoding or task.

Loss detection: a feed knows the last offset it delivered. A publication at that offset or
below is a duplicate and dropped; one further ahead means something was lost in fan-out (Redis
Pub/Sub is at most once): the feed holds later publications back, reads the hole from the
stream and delivers it in order, or — when the hole is no longer retained — sends ``resync``
(the state, at a new position) to that channel's subscribers only. A publication of another
epoch means the backend lost the stream: the feed checks the position and resyncs. After a
backend reconnect, and every ``channel_position_check_s``, every feed checks its position the
same way, so a lost *last* publication is found too.

Subscribing (Centrifugo's order): the feed listens to the channel first; the subscriber waits
in ``pending``, collecting what the feed delivers meanwhile; then the backend is read (recovery
or the state); then the answer, the replayed publications, and the collected ones after the
answer's offset are sent — nothing between the read and going live can be missed or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from captify_ws.channels.backend import ChannelBackend
from captify_ws.channels.recovery import NotRecovered, Recovered, decide
from captify_ws.channels.state import encode_patch
from captify_ws.channels.types import (
    ChannelClass,
    ChannelSnapshot,
    Outgoing,
    Published,
    SnapshotSource,
    StreamRead,
)
from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import BrokerError, CaptifyError, ChannelError, CloseCode
from captify_ws.protocol import channels as wire

logger = logging.getLogger("captify_ws.channels")

#: An in-process listener: ``(channel, offset, epoch, frame)`` for each publication, in order.
Listener = Callable[[str, int, str, str], None]


@dataclass(frozen=True, slots=True)
class HubLimits:
    """The hub's bounds (from Settings, with their units)."""

    publication_max_bytes: int = 64 << 10
    recovery_max_publications: int = 1000
    recovery_max_bytes: int = 4 << 20
    event_max_chars: int = 128
    channel_name_max_bytes: int = 256
    position_check_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a subscribe: its frame, the replayed frames, and its position."""

    text: str
    replay: tuple[tuple[int, str], ...]
    offset: int
    epoch: str


class Feed:
    """This instance's subscribers of one channel, and the position delivered to them."""

    __slots__ = ("ahead", "busy", "channel", "closed", "early", "epoch", "idle", "klass",
                 "listeners", "live", "offset", "pending", "queue")

    def __init__(self, channel: str, klass: ChannelClass) -> None:
        self.channel = channel
        self.klass = klass
        self.epoch: str | None = None
        self.offset = 0
        #: subscribers up to date with ``offset`` (a dict as an ordered set)
        self.live: dict[Connection, None] = {}
        #: subscribers whose answer was ahead of ``offset``: → the offset they have
        self.ahead: dict[Connection, int] = {}
        #: subscribers waiting for their answer: → what was delivered meanwhile
        self.pending: dict[Connection, list[tuple[int, PreparedFrame]]] = {}
        self.listeners: list[Listener] = []
        #: a repair or resync is running: publications wait in ``queue``
        self.busy = False
        #: set while not busy
        self.idle = asyncio.Event()
        self.idle.set()
        self.queue: deque[tuple[int, str, str]] = deque()
        #: publications heard before the first position was known
        self.early: list[tuple[int, str, str]] = []
        self.closed = False

    @property
    def empty(self) -> bool:
        return not (self.live or self.ahead or self.pending or self.listeners)


class ChannelHub:
    """See the module docstring."""

    def __init__(self, backend: ChannelBackend, limits: HubLimits | None = None) -> None:
        self.backend = backend
        self.limits = limits or HubLimits()
        self.classes: dict[str, ChannelClass] = {}
        self.feeds: dict[str, Feed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None
        #: plain counters for metrics and tests
        self.counters: dict[str, int] = {"publications": 0, "copies": 0, "recovered": 0,
                                         "not_recovered": 0, "resyncs": 0, "repairs": 0}
        backend.on_publication = self._on_publication
        backend.on_reconnect = self._on_reconnect

    # -- lifecycle -------------------------------------------------------------------------

    def register(self, klass: ChannelClass) -> None:
        """Make a channel class known (handlers do this when they are created)."""
        if klass.name in self.classes and self.classes[klass.name] is not klass:
            raise ValueError(f"two channel classes named {klass.name!r}")
        self.classes[klass.name] = klass

    async def start(self) -> None:
        await self.backend.start()
        self._checker = asyncio.get_running_loop().create_task(
            self._check_forever(), name="captify-channel-check")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
        for task in [*self._tasks, *([self._checker] if self._checker else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._checker = None
        for feed in self.feeds.values():
            feed.closed = True
        self.feeds.clear()
        await self.backend.stop()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def class_of(self, channel: str) -> ChannelClass:
        """The class of a channel name, or ``ChannelError(4400)`` naming the known ones."""
        klass = self.classes.get(wire.channel_class(channel))
        if klass is None:
            known = ", ".join(f"{name}:…" for name in sorted(self.classes)) or "none"
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"unknown channel class in {channel!r} (known: {known})")
        return klass

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, channel: str, event: str, data: Any = None, *,
                      state_patch: Mapping[str, Any] | None = None,
                      idempotency_key: str | None = None, ephemeral: bool = False) -> Published:
        """Publish on a channel; see :func:`captify_ws.publish`."""
        limits = self.limits
        wire.check_channel(channel, limits.channel_name_max_bytes)
        klass = self.class_of(channel)
        if not isinstance(event, str) or not 0 < len(event) <= limits.event_max_chars:
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"event must be a string of 1 to {limits.event_max_chars} "
                               "characters")
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not 0 < len(idempotency_key) <= 256):
            raise ChannelError(CloseCode.BAD_REQUEST,
                               "idempotency_key must be a string of 1 to 256 characters")
        try:
            data_json = wire.dumps(data)
        except (TypeError, ValueError) as exc:
            raise ChannelError(CloseCode.BAD_REQUEST, f"data is not JSON: {exc}") from None
        if len(data_json) > limits.publication_max_bytes:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                               f"data larger than {limits.publication_max_bytes} bytes")
        fields, version = encode_patch(state_patch, limits.publication_max_bytes)
        ts_ms = int(time.time() * 1000)
        if ephemeral:
            if fields or idempotency_key is not None:
                raise ChannelError(CloseCode.BAD_REQUEST, "an ephemeral publication has no "
                                   "state_patch and no idempotency_key (it is never stored)")
            await self.backend.publish_ephemeral(
                channel, wire.encode_ephemeral(channel, event, data_json, ts_ms))
            return Published(0, "")
        patch_json = None
        if fields:
            patch_json = "{" + ",".join(wire.dumps(key) + ":" + (value or "null")
                                        for key, value in fields) + "}"
        outgoing = Outgoing(wire.pub_head(channel),
                            wire.pub_tail(event, data_json, ts_ms, patch_json),
                            fields, version, idempotency_key)
        result = await self.backend.publish(channel, outgoing, klass.retention)
        if not (result.duplicate or result.stale):
            self.counters["publications"] += 1
        return result

    # -- reading ---------------------------------------------------------------------------

    async def snapshot(self, channel: str) -> ChannelSnapshot:
        """The state a subscriber gets with ``recovered:false``, and its position."""
        klass = self.class_of(channel)
        retention = klass.retention
        if klass.snapshot is None:
            return await self.backend.snapshot(channel, retention)

        async def merged() -> ChannelSnapshot:
            return await self.backend.snapshot(channel, retention)

        async def stream(since: int, limit: int) -> StreamRead:
            return await self.backend.read(channel, since, limit, retention, partial=True)
        return await klass.snapshot(channel, SnapshotSource(merged, stream))

    async def read(self, channel: str, since_offset: int, limit: int, *,
                   partial: bool = False) -> StreamRead:
        """Retained publications after ``since_offset`` and the position: all of them when at
        most ``limit``, else none; with ``partial``, the first ``limit`` (paging)."""
        return await self.backend.read(channel, since_offset, limit,
                                       self.class_of(channel).retention, partial=partial)

    async def answer(self, ident: int | None, channel: str,
                     since: wire.Since | None) -> Answer:
        """The answer to a subscribe, from the backend (recovery, or the state)."""
        reason: str | None = None
        if since is not None:
            limit = self.limits.recovery_max_publications
            read = await self.read(channel, since.offset, limit)
            decision = decide(since, read, limit, self.limits.recovery_max_bytes)
            if isinstance(decision, Recovered):
                self.counters["recovered"] += 1
                position = read.position
                text = wire.encode_subscribed(ident, channel, position.epoch, position.offset,
                                              recovered=True, replay=len(decision.publications))
                return Answer(text, decision.publications, position.offset, position.epoch)
            assert isinstance(decision, NotRecovered)
            reason = decision.reason
            self.counters["not_recovered"] += 1
        snap = await self.snapshot(channel)
        position = snap.position
        text = wire.encode_subscribed(ident, channel, position.epoch, position.offset,
                                      recovered=False, reason=reason, state_json=snap.state_json)
        return Answer(text, (), position.offset, position.epoch)

    # -- subscribing -----------------------------------------------------------------------

    async def _feed(self, channel: str) -> Feed:
        feed = self.feeds.get(channel)
        if feed is None:
            feed = self.feeds[channel] = Feed(channel, self.class_of(channel))
            try:
                await self.backend.listen(channel)
            except BaseException:
                if feed.empty:
                    self._drop_feed(feed)
                raise
        return feed

    def _drop_feed(self, feed: Feed) -> None:
        if self.feeds.get(feed.channel) is feed:
            del self.feeds[feed.channel]
            feed.closed = True
            self._spawn(self._unlisten(feed.channel))

    async def _unlisten(self, channel: str) -> None:
        if channel not in self.feeds:
            with contextlib.suppress(BrokerError):
                await self.backend.unlisten(channel)

    async def subscribe(self, conn: Connection, ident: int | None, channel: str,
                        since: wire.Since | None) -> Answer:
        """Answer ``conn``'s subscribe and make it live; see the module docstring. Raises
        ``ChannelError``, ``BrokerError`` or ``StoreError`` (then ``conn`` is not subscribed)."""
        feed = await self._feed(channel)
        feed.pending[conn] = []
        try:
            for _ in range(3):
                answer = await self.answer(ident, channel, since)
                if feed.closed:
                    raise ChannelError(CloseCode.OVERLOADED, "server is shutting down")
                if feed.epoch is None:
                    self._set_position(feed, answer.epoch, answer.offset)
                if answer.epoch != feed.epoch:
                    # The feed or the answer is behind a change of epoch: settle the feed on
                    # the backend's current position, then answer again.
                    if not feed.busy:
                        self._start(feed, "verify")
                    await feed.idle.wait()
                    continue
                collected = feed.pending[conn]
                if feed.offset > answer.offset and \
                        not any(offset == answer.offset + 1 for offset, _ in collected):
                    continue  # read before a resync moved the feed on: read again
                break
            else:
                raise ChannelError(CloseCode.OVERLOADED,
                                   "the channel's position keeps changing; subscribe again")
        except BaseException:
            feed.pending.pop(conn, None)
            if feed.empty:
                self._drop_feed(feed)
            raise
        conn.send_text(answer.text)
        for _, text in answer.replay:
            conn.send_text(text)
        last = answer.offset
        for offset, frame in feed.pending.pop(conn, ()):
            if offset > last:
                conn.send_frame(frame)
                last = offset
        if last > feed.offset:
            feed.ahead[conn] = last
        else:
            feed.live[conn] = None
        return answer

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        feed.live.pop(conn, None)
        feed.ahead.pop(conn, None)
        feed.pending.pop(conn, None)
        if feed.empty:
            self._drop_feed(feed)

    async def add_listener(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each publication on ``channel`` (this instance hears them
        all, from any instance), in order, from now on. Returns the function that stops it."""
        feed = await self._feed(channel)
        if feed.epoch is None:
            read = await self.read(channel, 0, 0)
            if feed.epoch is None:
                self._set_position(feed, read.position.epoch, read.position.offset)
        feed.listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                feed.listeners.remove(listener)
            if feed.empty:
                self._drop_feed(feed)
        return remove

    def subscribers(self, channel: str) -> list[Connection]:
        """This instance's subscribers of a channel (live, catching up, or being answered)."""
        feed = self.feeds.get(channel)
        if feed is None:
            return []
        return [*feed.live, *feed.ahead, *feed.pending]

    # -- delivery --------------------------------------------------------------------------

    def _set_position(self, feed: Feed, epoch: str, offset: int) -> None:
        feed.epoch = epoch
        feed.offset = offset
        early, feed.early = feed.early, []
        for item in early:
            self._accept(feed, *item)

    def _on_publication(self, channel: str, offset: int | None, epoch: str, text: str) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        if offset is None:
            frame = PreparedFrame.text(text)
            for conn in feed.live:
                conn.send_frame(frame)
            for conn in feed.ahead:
                conn.send_frame(frame)
            return
        if feed.busy:
            feed.queue.append((offset, epoch, text))
            return
        self._accept(feed, offset, epoch, text)

    def _accept(self, feed: Feed, offset: int, epoch: str, text: str) -> None:
        if feed.epoch is None:
            feed.early.append((offset, epoch, text))
        elif epoch != feed.epoch:
            self._start(feed, "verify")
        elif offset <= feed.offset:
            return
        elif offset > feed.offset + 1:
            feed.queue.appendleft((offset, epoch, text))
            self._start(feed, "repair")
        else:
            self._deliver(feed, offset, epoch, PreparedFrame.text(text), text)

    def _deliver(self, feed: Feed, offset: int, epoch: str, frame: PreparedFrame,
                 text: str) -> None:
        feed.offset = offset
        live = feed.live
        for conn in live:
            conn.send_frame(frame)
        copies = len(live)
        if feed.ahead:
            for conn, at in list(feed.ahead.items()):
                if offset > at:
                    conn.send_frame(frame)
                    copies += 1
                if offset >= at:
                    del feed.ahead[conn]
                    live[conn] = None
        for collected in feed.pending.values():
            collected.append((offset, frame))
        for listener in feed.listeners:
            try:
                listener(feed.channel, offset, epoch, text)
            except Exception:
                logger.exception("channel listener failed on %s", feed.channel)
        self.counters["copies"] += copies

    def _start(self, feed: Feed, work: str) -> None:
        """Run a ``"repair"`` or ``"verify"`` of ``feed``; publications wait in its queue
        meanwhile."""
        feed.busy = True
        feed.idle.clear()
        self._spawn(self._run(feed, work))

    async def _run(self, feed: Feed, work: str) -> None:
        delay = 0.1
        try:
            while not feed.closed:
                try:
                    await (self._repair(feed) if work == "repair" else self._verify(feed))
                    break
                except CaptifyError as exc:  # the backend or the store is away: retry
                    logger.warning("channel %s: %s failed, retrying: %s", feed.channel, work,
                                   exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    work = "verify"
        finally:
            feed.busy = False
            while feed.queue and not feed.busy and not feed.closed:
                self._accept(feed, *feed.queue.popleft())
            if not feed.busy:
                feed.idle.set()

    async def _repair(self, feed: Feed) -> None:
        """Read the hole after ``feed.offset`` and deliver it, or resync."""
        self.counters["repairs"] += 1
        assert feed.epoch is not None
        since = wire.Since(feed.offset, feed.epoch)
        limit = self.limits.recovery_max_publications
        read = await self.read(feed.channel, since.offset, limit)
        decision = decide(since, read, limit, self.limits.recovery_max_bytes)
        if isinstance(decision, NotRecovered):
            await self._resync(feed, decision.reason)
            return
        logger.info("channel %s: repaired %d lost publications", feed.channel,
                    len(decision.publications))
        for offset, text in decision.publications:
            if offset > feed.offset:
                self._deliver(feed, offset, read.position.epoch, PreparedFrame.text(text), text)

    async def _verify(self, feed: Feed) -> None:
        """Compare the feed with the backend's position: resync on another epoch, repair when
        behind."""
        read = await self.read(feed.channel, feed.offset, 0)
        position = read.position
        if feed.epoch is None:
            self._set_position(feed, position.epoch, position.offset)
        elif position.epoch != feed.epoch:
            await self._resync(feed, "epoch")
        elif position.offset > feed.offset:
            await self._repair(feed)

    async def _resync(self, feed: Feed, reason: str) -> None:
        """Send the state at a new position to the feed's subscribers (that channel only)."""
        snap = await self.snapshot(feed.channel)
        position = snap.position
        self.counters["resyncs"] += 1
        logger.info("channel %s: resync (%s) to %s@%d", feed.channel, reason, position.epoch,
                    position.offset)
        feed.epoch = position.epoch
        feed.offset = position.offset
        frame = PreparedFrame.text(wire.encode_resync(feed.channel, position.epoch,
                                                      position.offset, reason,
                                                      state_json=snap.state_json))
        for conn in feed.ahead:
            feed.live[conn] = None
        feed.ahead.clear()
        for collected in feed.pending.values():
            collected.clear()  # of the old position; their answers are checked against the new
        for conn in feed.live:
            conn.send_frame(frame)

    def _on_reconnect(self) -> None:
        logger.info("channel backend reconnected: checking %d channels", len(self.feeds))
        self._spawn(self.check_positions())

    async def check_positions(self) -> int:
        """Compare every feed with the backend's positions (one batch); verify those that
        differ. Returns how many did."""
        feeds = [feed for feed in self.feeds.values() if feed.epoch is not None]
        if not feeds:
            return 0
        positions = await self.backend.positions([feed.channel for feed in feeds])
        differing = 0
        for feed in feeds:
            position = positions.get(feed.channel)
            if feed.closed or feed.busy or (position is not None and position.epoch == feed.epoch
                                            and position.offset == feed.offset):
                continue
            differing += 1
            self._start(feed, "verify")
        return differing

    async def _check_forever(self) -> None:
        """Every ``position_check_s``: a lost *last* publication leaves no gap to notice."""
        if not self.backend.lossy:
            return
        while True:
            await asyncio.sleep(self.limits.position_check_s)
            try:
                await self.check_positions()
            except CaptifyError as exc:
                logger.warning("channel position check failed: %s", exc)
