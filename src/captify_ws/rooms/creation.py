"""How fast one client may bring new documents into being (issue 13.9).

Opening a document that is not in the store loads a room, and a client that names a new
document on every connection makes the server load rooms (and store documents) as fast as it
can connect: one anonymous client created 30,000 documents in under a minute. Each creator — a
user, or a client address for anonymous connections — has a token bucket of
``document_create_rate`` new documents per minute (the bucket holds one minute's worth).

Memory: one entry per creator seen within the last minute or so; entries whose bucket has
refilled are dropped when the table grows past :data:`PRUNE_AT`, and it never holds more than
:data:`MAX_CREATORS` (the oldest go first).
"""

from __future__ import annotations

import time
from typing import Final

PRUNE_AT: Final = 10_000
MAX_CREATORS: Final = 100_000


class CreationLimiter:
    """Token buckets of new documents per creator. ``rate_per_minute`` 0: no limit."""

    def __init__(self, rate_per_minute: float) -> None:
        self.rate_per_minute = rate_per_minute
        #: creator → (tokens left, when they were counted), oldest first
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, creator: str) -> bool:
        """Take one new document from ``creator``'s bucket; ``False`` when it is empty."""
        rate = self.rate_per_minute
        if rate <= 0:
            return True
        now = time.monotonic()
        tokens, stamp = self._buckets.pop(creator, (rate, now))
        tokens = min(rate, tokens + (now - stamp) * rate / 60)
        allowed = tokens >= 1
        self._buckets[creator] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > PRUNE_AT:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        rate = self.rate_per_minute
        for creator, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * rate / 60 >= rate:
                del self._buckets[creator]
        while len(self._buckets) > MAX_CREATORS:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
