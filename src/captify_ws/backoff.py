"""Waiting between attempts: exponential backoff with jitter, the one helper of every retry loop
(the broker, the channel backend and feeds, the store writer, webhooks, the Python client).

The wait before attempt *n + 1* is ``first_s × 2^(n-1)``, capped at ``max_s``, times a random
factor from 0.5 to 1 ("equal jitter", AWS Architecture Blog, *Exponential Backoff and Jitter*,
2015): instances or deliveries that failed together do not all retry together, and no wait is
longer than the cap.
"""

from __future__ import annotations

import asyncio
import random


def delay_after(attempts: int, first_s: float, max_s: float,
                rng: random.Random | None = None) -> float:
    """Seconds to wait after ``attempts`` failed attempts (1 for the first failure): from
    ``first_s / 2`` to ``first_s`` after one, doubling per attempt up to ``max_s``."""
    full: float = min(max_s, first_s * 2.0 ** max(0, attempts - 1))
    return full * (rng.uniform(0.5, 1.0) if rng is not None else random.uniform(0.5, 1.0))


class Backoff:
    """The waits of one retry loop: :meth:`wait` after each failure, :meth:`reset` after a
    success. ``first_s`` and ``max_s`` are seconds (see the module docstring)."""

    __slots__ = ("failures", "first_s", "max_s", "rng")

    def __init__(self, first_s: float = 0.1, max_s: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.rng = rng
        #: failures since the last success
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before the next attempt."""
        self.failures += 1
        return delay_after(self.failures, self.first_s, self.max_s, self.rng)

    async def wait(self) -> None:
        """Count one more failure and sleep before the next attempt."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits ``first_s`` again."""
        self.failures = 0
