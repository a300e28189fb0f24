"""Agent runs on the channel core: publishing, the compacted snapshot, cancel, and the
producer watchdog. One :class:`AgentRuns` per server (the ``/ws/agent`` handler owns it).

* A run is the channel ``agent:{run_id}``; its state (merged patches) holds ``status`` and
  ``owner``; its stream holds every event. The first terminal event seals the stream on every
  backend (atomically, in the same script as the append), so exactly one is stored and any
  later publication answers :class:`~captify_ws.errors.RunEnded`.
* :meth:`AgentRuns.snapshot` folds the stream up to the position it read first (never past
  it: the publications after it follow as live ones, and token deltas are not idempotent).
  Folds are cached per run and advanced, so 1,000 late joiners cost one fold, not 1,000.
  After a run ends its final snapshot is kept in the channel store, for when the stream has
  expired (``agent_history_ttl_s``).
* Only a ``cancel`` stops a run (:meth:`AgentRuns.cancel`); subscribers leaving never do.
* The watchdog: every ``agent_producer_ttl_s / 4`` (at most 5 s), each run this instance
  serves (subscribers, listeners, producers) whose last publication is older than
  ``agent_producer_ttl_s`` and is not terminal gets ``run.failed {"error":"producer_lost"}``:
  a producer that died (``kill -9``) never leaves a run looking alive. Only runs this
  instance heard nothing from for that long are read (two reads each), so busy runs cost
  nothing, and runs seen ended are not read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from captify_ws.agents.events import (
    CLASS,
    TERMINAL,
    RunFold,
    channel_of,
    check_event,
    event_of,
    parse_pub,
    run_id_of,
)
from captify_ws.channels.types import (
    ChannelClass,
    ChannelSnapshot,
    Published,
    Retention,
    SnapshotSource,
)
from captify_ws.errors import BrokerError, ChannelError, CloseCode, RunEnded, StoreError
from captify_ws.protocol.channels import dumps

if TYPE_CHECKING:
    from captify_ws.channels.services import ChannelServices

logger = logging.getLogger("captify_ws.agents")

#: Runs whose fold is cached (the least recently used are dropped first).
MAX_CACHED_FOLDS = 1000
#: Publications read per page while folding.
PAGE = 500


class AgentRuns:
    """See the module docstring."""

    def __init__(self, services: ChannelServices) -> None:
        self.services = services
        self.hub = services.hub
        settings = services.settings
        self.settings = settings
        self.klass = ChannelClass(
            CLASS,
            Retention(history_size=settings.agent_history_size,
                      history_ttl_s=settings.agent_history_ttl_s,
                      meta_ttl_s=max(settings.channel_meta_ttl_s, settings.agent_history_ttl_s)),
            snapshot=self.snapshot, description="an agent run's events",
            terminal_events=TERMINAL, prepare=self._prepare,
            recovery_max_publications=settings.agent_recovery_max_publications)
        self._folds: OrderedDict[str, RunFold] = OrderedDict()
        self._fold_locks: dict[str, asyncio.Lock] = {}
        #: channels of runs whose producer runs in this process → how many
        self.local_producers: dict[str, int] = {}
        self._watchdog: asyncio.Task[None] | None = None
        #: watched run → (its feed's position, since when it has not changed)
        self._quiet: dict[str, tuple[tuple[str | None, int], float]] = {}
        #: runs whose final snapshot is in the store (bounded, oldest forgotten first)
        self._kept: OrderedDict[str, None] = OrderedDict()
        #: runs seen ended → the feed position they were seen ended at
        self._ended: dict[str, tuple[str | None, int]] = {}
        #: plain counters for metrics and tests
        self.counters = {"folds": 0, "folded_publications": 0, "producer_lost": 0,
                         "cancels": 0, "tokens": 0, "token_publications": 0}

    def _prepare(self, channel: str, event: str, data: Any, state_patch: Any) -> Any:
        if state_patch is not None:
            raise ChannelError(CloseCode.BAD_REQUEST, "agent runs keep their own state: "
                               "publish without state_patch")
        return check_event(event, data, self.settings.agent_delta_max_chars)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch_forever(), name="captify-agent-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, run_id: str, event: str, data: Any = None, *,
                      idempotency_key: str | None = None) -> Published:
        """Publish one event of a run (checked by :func:`check_event`). Raises
        :class:`RunEnded` when the run already ended (nothing stored), ``ChannelError`` for
        a malformed event and ``BrokerError`` when the backend is unreachable."""
        channel = channel_of(run_id)
        result = await self.hub.publish(channel, event, data, idempotency_key=idempotency_key)
        if result.sealed:
            raise RunEnded(run_id, await self.status(run_id))
        if event in TERMINAL and not result.duplicate:
            await self._keep_final(channel)
        return result

    async def status(self, run_id: str) -> str:
        """``pending`` (never started), ``running``, ``completed``, ``failed`` or
        ``cancelled``."""
        return (await self.state(run_id)).get("status") or "pending"

    async def state(self, run_id: str) -> dict[str, Any]:
        """The run's merged state: ``{status?, owner?}``."""
        snap = await self.hub.backend.snapshot(channel_of(run_id), self.klass.retention)
        state = json.loads(snap.state_json)
        return state if isinstance(state, dict) else {}

    async def cancel(self, run_id: str, by: str | None) -> str:
        """Cancel a running run: ``run.cancelled {by}`` is stored and reaches its producer.
        Answers the run's final status (``cancelled``, or how it had ended already). Raises
        ``ChannelError(4404)`` for a run never started."""
        status = await self.status(run_id)
        if status == "pending":
            raise ChannelError(CloseCode.NOT_FOUND, f"unknown run {run_id!r} (never "
                               "started, or expired)")
        if status != "running":
            return status
        try:
            await self.publish(run_id, "run.cancelled", {"by": by},
                               idempotency_key=f"agent:{run_id}:cancelled")
        except RunEnded as exc:
            return exc.status
        self.counters["cancels"] += 1
        return "cancelled"

    # -- the snapshot ----------------------------------------------------------------------

    async def snapshot(self, channel: str, source: SnapshotSource) -> ChannelSnapshot:
        """The compacted run for ``recovered:false``, exactly as of the position read first."""
        lock = self._fold_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            merged = await source.merged_state()
            position = merged.position
            fold = self._folds.get(channel)
            if fold is None or fold.epoch != position.epoch or fold.offset > position.offset:
                fold = RunFold(run_id_of(channel), epoch=position.epoch)
                self.counters["folds"] += 1
            await self._advance(channel, fold, source, position.offset)
            self._folds[channel] = fold
            self._folds.move_to_end(channel)
            while len(self._folds) > MAX_CACHED_FOLDS:
                dropped, _ = self._folds.popitem(last=False)
                self._fold_locks.pop(dropped, None)
            state = fold.to_json()
            merged_state = json.loads(merged.state_json)
            if isinstance(merged_state, dict) and merged_state.get("status"):
                state["status"] = merged_state["status"]  # the backend's word, even if trimmed
            snapshot = ChannelSnapshot(position, dumps(state))
            if fold.ended and not fold.partial and channel not in self._kept:
                await self._save_final(channel, snapshot)
            return snapshot

    async def _advance(self, channel: str, fold: RunFold, source: SnapshotSource,
                       until: int) -> None:
        while fold.offset < until:
            read = await source.stream(fold.offset, PAGE)
            entries = [(offset, frame) for offset, frame in read.publications
                       if offset <= until]
            if not entries or entries[0][0] != fold.offset + 1:
                await self._restore(channel, fold, until)
                if not entries:
                    fold.offset = until
                    return
            for offset, frame in entries:
                fold.apply_frame(offset, frame)
            self.counters["folded_publications"] += len(entries)

    async def _restore(self, channel: str, fold: RunFold, until: int) -> None:
        """The start of the stream is gone: the stored final snapshot, if the run ended."""
        if fold.offset == 0:
            stored = await self.services.store.load_state(channel)
            if stored and "snapshot" in stored:
                restored = RunFold.from_json(json.loads(stored["snapshot"]))
                fold.__dict__.update({k: v for k, v in restored.__dict__.items()
                                      if k not in ("epoch", "offset")})
                return
        fold.partial = True

    async def _keep_final(self, channel: str) -> None:
        """Keep the final snapshot in the store (the stream expires after the run). Runs
        ended through another path (``POST /api/v1/publish``, the Redis ingest) are kept by
        the first snapshot or watchdog pass that sees them ended."""
        if channel in self._kept:
            return
        try:
            await self.hub.snapshot(channel)  # saves it (see snapshot())
        except (StoreError, BrokerError) as exc:
            logger.warning("final snapshot of %s not kept: %s", channel, exc)

    async def _save_final(self, channel: str, snapshot: ChannelSnapshot) -> None:
        try:
            await self.services.store.save_state(channel, snapshot.position.epoch,
                                                 snapshot.position.offset,
                                                 {"snapshot": snapshot.state_json})
        except StoreError as exc:
            logger.warning("final snapshot of %s not kept: %s", channel, exc)
            return
        self._kept[channel] = None
        while len(self._kept) > MAX_CACHED_FOLDS:
            self._kept.popitem(last=False)

    # -- the watchdog ----------------------------------------------------------------------

    def watched(self) -> list[str]:
        """The runs this instance serves: subscribed, listened to, or produced here."""
        prefix = CLASS + ":"
        channels = {channel for channel in self.hub.feeds.feeds if channel.startswith(prefix)}
        return sorted(channels | set(self.local_producers))

    async def check_producer(self, channel: str) -> str:
        """End the run as ``run.failed`` if its producer fell silent. Answers ``"failed"``
        (it did now), ``"ended"`` (the run had ended), ``"alive"`` or ``"empty"`` (never
        published)."""
        hub = self.hub
        top = (await hub.read(channel, 0, 0)).position.offset
        if top == 0:
            return "empty"
        last = await hub.read(channel, top - 1, 1, partial=True)
        if not last.publications:
            return "empty"
        offset, frame = last.publications[-1]
        if event_of(frame) in TERMINAL:
            return "ended"
        _, _, ts = parse_pub(frame)
        ttl = self.settings.agent_producer_ttl_s
        if time.time() - ts / 1000 <= ttl:
            return "alive"
        run_id = run_id_of(channel)
        try:
            await self.publish(run_id, "run.failed",
                               {"error": "producer_lost",
                                "detail": f"no event or heartbeat for {ttl:g} s"},
                               idempotency_key=f"agent:{run_id}:lost:{offset}")
        except RunEnded:
            return "ended"
        self.counters["producer_lost"] += 1
        logger.info("agent run %s failed: its producer fell silent", run_id)
        return "failed"

    def due(self, now: float) -> list[str]:
        """The watched runs to check now: those this instance has heard nothing new from
        for ``agent_producer_ttl_s`` (its feed's position is unchanged), so that busy runs
        cost no reads; runs seen ended are not checked again."""
        feeds = self.hub.feeds.feeds
        seen: dict[str, tuple[tuple[str | None, int], float]] = {}
        due = []
        for channel in self.watched():
            feed = feeds.get(channel)
            position = (feed.epoch, feed.offset) if feed is not None else (None, -1)
            last = self._quiet.get(channel)
            since = last[1] if last is not None and last[0] == position else now
            seen[channel] = (position, since)
            if channel in self._ended and self._ended[channel] == position:
                continue
            if now - since >= self.settings.agent_producer_ttl_s:
                due.append(channel)
        self._quiet = seen
        self._ended = {channel: position for channel, position in self._ended.items()
                       if channel in seen and seen[channel][0] == position}
        return due

    async def watch_once(self, now: float) -> list[str]:
        """One pass of the watchdog (see :meth:`due`); answers the runs it read."""
        checked = self.due(now)
        for channel in checked:
            try:
                if await self.check_producer(channel) in ("ended", "failed"):
                    await self._keep_final(channel)
                    feed = self.hub.feeds.feeds.get(channel)
                    if feed is not None:
                        self._ended[channel] = (feed.epoch, feed.offset)
            except (ChannelError, BrokerError, StoreError) as exc:
                logger.warning("agent watchdog: %s: %s", channel, exc)
        return checked

    async def _watch_forever(self) -> None:
        period = min(5.0, self.settings.agent_producer_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            await self.watch_once(time.monotonic())
