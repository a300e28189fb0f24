"""What the server counts: plain integers and histograms on one :class:`Stats` object.

The hot paths only add to them (tens of nanoseconds); ``server_metrics.py`` turns them into
Prometheus metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import time
from typing import Final

#: Bucket bounds (seconds) for fan-out and store-write latency.
LATENCY_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                          0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A latency histogram cheap enough for the hot path (no lock, no labels)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class Stats:
    """Counters of one server. Plain attributes: incremented on hot paths."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.messages_in: dict[str, int] = {}
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.broadcasts: dict[str, int] = {}
        self.broadcast_copies: dict[str, int] = {}
        self.fanout = Histogram()
        self.store_writes = Histogram()
        self.refusals: dict[str, int] = {}
        #: presence entries ignored: "foreign" (an id another live connection controls),
        #: "bound" (past a connection's presence bounds)
        self.presence_ignored: dict[str, int] = {}
        self.slow_consumers = 0
        #: ``--workers`` document affinity (transport/handoff.py): "sent" to the owner,
        #: "received", "returned" (to stay with a worker), "kept" (a send would block)
        self.worker_handoffs: dict[str, int] = {}
        self.connections_opened = 0

    def received(self, kind: str, size: int) -> None:
        self.messages_in[kind] = self.messages_in.get(kind, 0) + 1
        self.bytes_in += size

    def broadcast(self, kind: str, copies: int, seconds: float) -> None:
        self.broadcasts[kind] = self.broadcasts.get(kind, 0) + 1
        self.broadcast_copies[kind] = self.broadcast_copies.get(kind, 0) + copies
        self.fanout.observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
