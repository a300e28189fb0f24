"""The durable ingest: publications from other languages through a Redis stream.

A backend that cannot call captify-ws (or must not lose a publication while captify-ws is
down) appends to the stream ``P:ingest`` with fields ``ch`` (channel), ``ev`` (event), ``d``
(the data, JSON), and optionally ``sp`` (a state patch, JSON), ``ik`` (an idempotency key),
``eph`` (``1``: ephemeral), ``rk`` (a list ``P:ingest:reply:…`` that gets the answer
``"<offset> <epoch>[ duplicate|stale|sealed]"`` or ``"error <code> <message>"``; what
:class:`captify_ws.client.Publisher` waits on)::

    redis-cli XADD captify:ingest MAXLEN '~' 100000 '*' ch workflow:run-7 ev step.status \
        d '{"step":"ocr","status":"done"}' sp '{"ocr":"done"}' ik run-7:ocr:done

Every instance reads it in the consumer group ``captify`` (at least once: an entry is
acknowledged after its publication is appended); entries a dead instance had taken are
claimed by another after ``channel_ingest_claim_idle_s``. Duplicates are dropped by the
idempotency key (``ik``, else the entry's id) within ``channel_idempotency_window_s``. An
entry that can never be published (unknown class, bad JSON, too big) is acknowledged and
copied to ``P:ingest:dead`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis.exceptions import RedisError, ResponseError

from captify_ws.channels.hub import ChannelHub
from captify_ws.channels.types import Published
from captify_ws.errors import CaptifyError, ChannelError

logger = logging.getLogger("captify_ws.channels.ingest")

GROUP = "captify"
#: Entries read per call, and milliseconds a read waits (below the client's socket timeout).
BATCH = 100
BLOCK_MS = 1000


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}


class Ingest:
    """Consumes ``P:ingest`` into the hub. See the module docstring."""

    def __init__(self, client: Any, hub: ChannelHub, *, prefix: str, consumer: str,
                 claim_idle_s: float = 30.0, dead_max_entries: int = 10_000) -> None:
        self._client = client
        self._hub = hub
        self.stream = f"{prefix}:ingest"
        self.dead = f"{prefix}:ingest:dead"
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._dead_max = dead_max_entries
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="captify-ingest")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        delay = 0.1
        claimed_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._ensure_group()
                while True:
                    if loop.time() - claimed_at > self._claim_idle_ms / 2000:
                        claimed_at = loop.time()
                        await self._claim()
                    answer = await self._client.xreadgroup(
                        GROUP, self._consumer, {self.stream: ">"}, count=BATCH, block=BLOCK_MS)
                    for _, entries in answer or ():
                        await self._handle(entries)
                    delay = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, CaptifyError) as exc:
                logger.warning("ingest from %s paused: %s", self.stream, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _claim(self) -> None:
        """Take over entries another consumer read but did not acknowledge in time."""
        start = "0-0"
        while True:
            answer = await self._client.xautoclaim(self.stream, GROUP, self._consumer,
                                                   self._claim_idle_ms, start_id=start,
                                                   count=BATCH)
            start, entries = answer[0], answer[1]
            if entries:
                logger.info("ingest: took over %d entries of a silent consumer", len(entries))
                await self._handle(entries)
            if not entries or start in (b"0-0", "0-0"):
                return

    async def _handle(self, entries: list[Any]) -> None:
        for entry_id, raw in entries:
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if raw is None:  # deleted meanwhile
                await self._client.xack(self.stream, GROUP, ident)
                continue
            fields = _fields(raw)
            try:
                result = await self._publish(ident, fields)
                answer = f"{result.offset} {result.epoch}"
                if result.duplicate:
                    answer += " duplicate"
                elif result.stale or result.sealed:
                    answer += " stale" if result.stale else " sealed"
            except ChannelError as exc:
                logger.warning("ingest entry %s dropped: %s", ident, exc.message)
                await self._client.xadd(self.dead, {**fields, "id": ident,
                                                    "error": exc.message},
                                        maxlen=self._dead_max, approximate=True)
                answer = f"error {exc.code} {exc.message}"
            reply = fields.get("rk")
            if reply and reply.startswith(self.stream + ":reply:"):
                pipe = self._client.pipeline(transaction=False)
                pipe.lpush(reply, answer)
                pipe.expire(reply, 60)
                await pipe.execute()
            await self._client.xack(self.stream, GROUP, ident)

    async def _publish(self, ident: str, fields: dict[str, str]) -> Published:
        def json_field(name: str) -> Any:
            if name not in fields:
                return None
            try:
                return json.loads(fields[name])
            except ValueError:
                raise ChannelError(4400, f"field {name!r} is not JSON") from None

        channel, event = fields.get("ch"), fields.get("ev")
        if not channel or not event:
            raise ChannelError(4400, "an ingest entry needs the fields 'ch' and 'ev'")
        ephemeral = fields.get("eph") in ("1", "true")
        result = await self._hub.publish(channel, event, json_field("d"),
                                         state_patch=json_field("sp"),
                                         idempotency_key=None if ephemeral else
                                         (fields.get("ik") or f"ingest:{ident}"),
                                         ephemeral=ephemeral)
        self.published += 1
        return result
