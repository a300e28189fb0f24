"""Feeds: this instance's subscribers of each channel, and delivery in offset order.

A feed knows the last offset it delivered. Delivery (the hot path): a publication arrives from
the backend as its finished ``pub`` frame; it is wrapped once in a
:class:`~captify_ws.connection.PreparedFrame` and the same bytes are written to every live
subscriber in a plain loop — no per-recipient encoding or task.

Loss detection: a publication at or below the feed's offset is a duplicate and dropped; one
further ahead means something was lost in fan-out (Redis Pub/Sub is at most once): the feed
holds later publications back, reads the hole from the stream and delivers it in order, or —
when the hole is no longer retained — sends ``resync`` (the state, at a new position) to that
channel's subscribers only. A publication of another epoch means the backend lost the stream:
the feed checks the position and resyncs. After a backend reconnect, and every
``channel_position_check_s``, every feed is compared with the backend's position the same
way, so a lost *last* publication is found too.

Joining (Centrifugo's order): the feed listens to the channel first; the subscriber waits in
``pending``, collecting what the feed delivers meanwhile; then the backend is read (recovery or
the state); then the answer, the replayed publications, and the collected ones after the
answer's offset are sent — nothing between the read and going live is missed or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from captify_ws.backoff import Backoff
from captify_ws.channels.backend import ChannelBackend
from captify_ws.channels.feed import Answer, Feed, Listener
from captify_ws.channels.recovery import NotRecovered, decide
from captify_ws.channels.types import ChannelClass, ChannelSnapshot, StreamRead
from captify_ws.connection import Connection, PreparedFrame
from captify_ws.errors import BrokerError, CaptifyError, ChannelError, CloseCode
from captify_ws.protocol import channels as wire
from captify_ws.tasks import wait_ended

logger = logging.getLogger("captify_ws.channels")

class Feeds:
    """The feeds of one hub. ``read`` and ``snapshot`` are the hub's (class-aware)."""

    def __init__(self, backend: ChannelBackend,
                 read: Callable[[str, int, int], Awaitable[StreamRead]],
                 snapshot: Callable[[str], Awaitable[ChannelSnapshot]],
                 recovery_max_publications: int, recovery_max_bytes: int,
                 position_check_s: float, counters: dict[str, int]) -> None:
        self.backend = backend
        self.read = read
        self.snapshot = snapshot
        self._max_publications = recovery_max_publications
        self._max_bytes = recovery_max_bytes
        self._position_check_s = position_check_s
        self.counters = counters
        self.feeds: dict[str, Feed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        backend.on_publication = self._on_publication
        backend.on_reconnect = self._on_reconnect

    async def start(self) -> None:
        self._spawn(self._check_forever())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await wait_ended(tasks, logger)
        for feed in self.feeds.values():
            feed.closed = True
        self.feeds.clear()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _feed(self, channel: str, klass: ChannelClass) -> Feed:
        feed = self.feeds.get(channel)
        if feed is None:
            feed = self.feeds[channel] = Feed(channel, klass)
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
            try:
                await self.backend.unlisten(channel)
            except BrokerError as exc:  # the backend is away: its reconnect listens afresh
                logger.info("channel %s: unlisten failed: %s", channel, exc)

    async def join(self, conn: Connection, channel: str, klass: ChannelClass,
                   answer_now: Callable[[], Awaitable[Answer]]) -> Answer:
        """Answer ``conn``'s subscribe with ``answer_now()`` and make it live; see the module
        docstring. Raises what ``answer_now`` raises (then ``conn`` is not subscribed)."""
        feed = await self._feed(channel, klass)
        feed.pending[conn] = []
        try:
            for _ in range(3):
                answer = await answer_now()
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
            feed.live.add(conn)
        return answer

    def leave(self, conn: Connection, channel: str) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        feed.live.discard(conn)
        feed.ahead.pop(conn, None)
        feed.pending.pop(conn, None)
        if feed.empty:
            self._drop_feed(feed)

    async def listen(self, channel: str, klass: ChannelClass,
                     listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each publication on ``channel``, in order, from now on."""
        feed = await self._feed(channel, klass)
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
            feed.live.send(frame)
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
        copies = live.send(frame)
        if feed.ahead:
            for conn, at in list(feed.ahead.items()):
                if offset > at:
                    conn.send_frame(frame)
                    copies += 1
                if offset >= at:
                    del feed.ahead[conn]
                    live.add(conn)
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
        backoff = Backoff()
        try:
            while not feed.closed:
                try:
                    await (self._repair(feed) if work == "repair" else self._verify(feed))
                    break
                except CaptifyError as exc:  # the backend or the store is away: retry
                    logger.warning("channel %s: %s failed, retrying: %s", feed.channel, work,
                                   exc)
                    await backoff.wait()
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
        limit = self._max_publications
        read = await self.read(feed.channel, since.offset, limit)
        decision = decide(since, read, limit, self._max_bytes)
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
            feed.live.add(conn)
        feed.ahead.clear()
        for collected in feed.pending.values():
            collected.clear()  # of the old position; their answers are checked against the new
        feed.live.send(frame)

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
            if feed.closed or feed.busy:
                continue
            if position is None and feed.offset == 0:
                continue  # never published, and forgotten: the next publication tells
            if position is not None and position.epoch == feed.epoch and \
                    position.offset == feed.offset:
                continue
            differing += 1
            self._start(feed, "verify")
        return differing

    async def _check_forever(self) -> None:
        """Every ``position_check_s``: a lost *last* publication leaves no gap to notice."""
        if not self.backend.lossy:
            return
        while True:
            await asyncio.sleep(self._position_check_s)
            try:
                await self.check_positions()
            except CaptifyError as exc:
                logger.warning("channel position check failed: %s", exc)
