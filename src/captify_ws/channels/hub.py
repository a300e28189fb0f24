"""The channel hub: one per server. It knows the channel classes, publishes through the
backend, answers subscribes (recovery, or the state with the reason), and hands delivery to
the feeds (:mod:`captify_ws.channels.feeds`: offset order, loss detection, repair, resync).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from captify_ws.channels.backend import ChannelBackend
from captify_ws.channels.feed import Answer, Listener
from captify_ws.channels.feeds import Feeds
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
from captify_ws.connection import Connection
from captify_ws.errors import ChannelError, CloseCode
from captify_ws.protocol import channels as wire

logger = logging.getLogger("captify_ws.channels")


@dataclass(frozen=True, slots=True)
class HubLimits:
    """The hub's bounds (from Settings, with their units)."""

    publication_max_bytes: int = 64 << 10
    recovery_max_publications: int = 1000
    recovery_max_bytes: int = 4 << 20
    event_max_chars: int = 128
    channel_name_max_bytes: int = 256
    position_check_s: float = 10.0


class ChannelHub:
    """See the module docstring."""

    def __init__(self, backend: ChannelBackend, limits: HubLimits | None = None) -> None:
        self.backend = backend
        self.limits = limits = limits or HubLimits()
        self.classes: dict[str, ChannelClass] = {}
        #: plain counters for metrics and tests
        self.counters: dict[str, int] = {"publications": 0, "copies": 0, "recovered": 0,
                                         "not_recovered": 0, "resyncs": 0, "repairs": 0}
        self.feeds = Feeds(backend, self.read, self.snapshot,
                           limits.recovery_max_publications, limits.recovery_max_bytes,
                           limits.position_check_s, self.counters)

    # -- lifecycle -------------------------------------------------------------------------

    def register(self, klass: ChannelClass) -> None:
        """Make a channel class known (handlers do this when they are created)."""
        if klass.name in self.classes and self.classes[klass.name] is not klass:
            raise ValueError(f"two channel classes named {klass.name!r}")
        self.classes[klass.name] = klass

    async def start(self) -> None:
        await self.backend.start()
        await self.feeds.start()

    async def stop(self) -> None:
        await self.feeds.stop()
        await self.backend.stop()

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
        if klass.prepare is not None:
            state_patch = klass.prepare(channel, event, data, state_patch)
        fields, version = encode_patch(state_patch, limits.publication_max_bytes)
        ts_ms = int(time.time() * 1000)
        if ephemeral:
            if event in klass.terminal_events:
                raise ChannelError(CloseCode.BAD_REQUEST, f"{event!r} ends the stream: it "
                                   "cannot be ephemeral")
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
                            fields, version, idempotency_key,
                            seal=event in klass.terminal_events)
        result = await self.backend.publish(channel, outgoing, klass.retention)
        if not (result.duplicate or result.stale or result.sealed):
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
            cap = self.class_of(channel).recovery_max_publications
            if cap is not None:
                limit = min(limit, cap)
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

    async def subscribe(self, conn: Connection, ident: int | None, channel: str,
                        since: wire.Since | None) -> Answer:
        """Answer ``conn``'s subscribe (recovery or the state) and make it live (see
        :mod:`captify_ws.channels.feeds`). Raises ``ChannelError``, ``BrokerError`` or
        ``StoreError``; then ``conn`` is not subscribed."""
        return await self.feeds.join(conn, channel, self.class_of(channel),
                                     lambda: self.answer(ident, channel, since))

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        self.feeds.leave(conn, channel)

    async def add_listener(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each publication on ``channel`` (this instance hears them
        all, from any instance), in order, from now on. Returns the function that stops it."""
        return await self.feeds.listen(channel, self.class_of(channel), listener)

    def subscribers(self, channel: str) -> list[Connection]:
        """This instance's subscribers of a channel (live, catching up, or being answered)."""
        return self.feeds.subscribers(channel)

    async def check_positions(self) -> int:
        """Compare every feed with the backend's position now (see ``feeds``)."""
        return await self.feeds.check_positions()
