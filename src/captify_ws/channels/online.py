"""Who is online: per-user connection counts of an endpoint, on every instance of the cluster.

``is_online(user_id)`` lets a backend choose between a push and an e-mail. On one process it is
this process's count. With Redis each instance keeps, per user with connections here, one field
of ``P:online:{user}`` = ``"<count> <valid-until ms>"``, rewritten when the count changes
(batched every 100 ms) and every third of ``online_ttl_s``; a reader sums the fields still
valid, so the connections of an instance that died stop counting within ``online_ttl_s``.
No join/leave broadcast (the N² traffic of presence channels is not needed to answer "any?").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

logger = logging.getLogger("captify_ws.channels")


class OnlineCounts:
    """See the module docstring. ``client`` is a redis-py asyncio client, or ``None``."""

    def __init__(self, client: Any = None, *, prefix: str = "captify", instance: str = "",
                 ttl_s: float = 60.0) -> None:
        self._client = client
        self._prefix = prefix
        self._instance = instance
        self._ttl_s = ttl_s
        self.local: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:online:{{{user_id}}}"

    async def start(self) -> None:
        if self._client is not None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever(),
                                                                name="captify-online")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # Withdraw this instance's counts at once rather than waiting for them to expire.
        try:
            pipe = self._client.pipeline(transaction=False)
            for user_id in self.local:
                pipe.hdel(self.key(user_id), self._instance)
            await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:  # they expire by online_ttl_s
            logger.info("online counts not withdrawn at stop: %s", exc)

    def add(self, user_id: str) -> None:
        self.local[user_id] = self.local.get(user_id, 0) + 1
        self._changed(user_id)

    def remove(self, user_id: str) -> None:
        count = self.local.get(user_id, 0) - 1
        if count > 0:
            self.local[user_id] = count
        else:
            self.local.pop(user_id, None)
        self._changed(user_id)

    def _changed(self, user_id: str) -> None:
        if self._client is not None:
            self._dirty.add(user_id)
            self._wake.set()

    async def count(self, user_id: str) -> int:
        """The user's connections on every instance (this one's counted exactly)."""
        local = self.local.get(user_id, 0)
        if self._client is None:
            return local
        fields = await self._client.hgetall(self.key(user_id))
        now_ms = int(time.time() * 1000)
        total = local
        for instance, value in fields.items():
            if instance.decode() == self._instance:
                continue
            count, _, until = value.decode().partition(" ")
            if until and int(until) > now_ms:
                total += int(count)
        return total

    async def _write(self, users: list[str]) -> None:
        until = int((time.time() + self._ttl_s) * 1000)
        pipe = self._client.pipeline(transaction=False)
        for user_id in users:
            key = self.key(user_id)
            count = self.local.get(user_id, 0)
            if count:
                pipe.hset(key, self._instance, f"{count} {until}")
                pipe.pexpire(key, int(self._ttl_s * 1000))
            else:
                pipe.hdel(key, self._instance)
        await pipe.execute()

    async def _flush_forever(self) -> None:
        refresh_every = self._ttl_s / 3
        refreshed = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), refresh_every)
            self._wake.clear()
            await asyncio.sleep(0.1)  # batch a burst of connects
            users = list(self._dirty)
            self._dirty.clear()
            if time.monotonic() - refreshed >= refresh_every:
                users = list({*users, *self.local})
                refreshed = time.monotonic()
            if not users:
                continue
            try:
                await self._write(users)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("online counts not written: %s", exc)
                self._dirty.update(users)
