"""What the server counts, and its Prometheus exposition (prometheus-client).

The hot paths only add to plain integers on one :class:`Stats` object (tens of nanoseconds);
the Prometheus metric families are built from them when ``/metrics`` is scraped, by
:class:`ServerCollector`, registered in a registry of the server's own (no global registry).
Metrics carry no document ids: per-document figures are on the admin dashboard, behind its key.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from captify_ws.server import Server

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
        self.connections_opened = 0
        self.connections_closed = 0

    def received(self, kind: str, size: int) -> None:
        self.messages_in[kind] = self.messages_in.get(kind, 0) + 1
        self.bytes_in += size

    def broadcast(self, kind: str, copies: int, seconds: float) -> None:
        self.broadcasts[kind] = self.broadcasts.get(kind, 0) + 1
        self.broadcast_copies[kind] = self.broadcast_copies.get(kind, 0) + copies
        self.fanout.observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1


def _counter(name: str, documentation: str, values: dict[str, int],
             label: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(),
                                 sum_value=histogram.sum)


class ServerCollector(Collector):
    """Builds the metric families from a server's live state at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        stats = server.stats
        connections = GaugeMetricFamily("captify_connections",
                                        "Open WebSocket connections on this instance",
                                        labels=["handler"])
        for name, conns in server.connections.items():
            connections.add_metric([name], len(conns))
        yield connections
        yield GaugeMetricFamily("captify_rooms_loaded", "Documents loaded in this instance",
                                value=len(server.rooms))
        yield _counter("captify_messages_received_total",
                       "Messages received from clients, by message type",
                       stats.messages_in, "type")
        yield CounterMetricFamily("captify_bytes_received_total",
                                  "Bytes of messages received from clients",
                                  value=stats.bytes_in)
        yield CounterMetricFamily("captify_frames_sent_total",
                                  "WebSocket frames queued for clients", value=stats.frames_out)
        yield CounterMetricFamily("captify_bytes_sent_total",
                                  "Bytes of frames queued for clients", value=stats.bytes_out)
        yield _counter("captify_broadcasts_total",
                       "Broadcasts to the members of a document, by kind",
                       stats.broadcasts, "kind")
        yield _counter("captify_broadcast_copies_total",
                       "Frames written by broadcasts, by kind", stats.broadcast_copies, "kind")
        yield _histogram("captify_broadcast_fanout_seconds",
                         "Time to write one broadcast to every member", stats.fanout)
        yield _histogram("captify_store_write_seconds",
                         "Time of one store transaction (group commit)", stats.store_writes)
        yield GaugeMetricFamily("captify_store_pending_writes",
                                "Updates accepted and not yet committed to the store",
                                value=server.writer.pending)
        yield GaugeMetricFamily("captify_store_up", "1 when the last store write succeeded",
                                value=0 if server.writer.error else 1)
        yield _counter("captify_auth_refusals_total",
                       "Connections refused, by reason (close code or 'origin')",
                       stats.refusals, "reason")
        yield _counter("captify_presence_ignored_total",
                       "Presence (awareness) entries ignored, by reason: 'foreign' (for a "
                       "client id another live connection controls), 'bound' (past a "
                       "connection's presence bounds)", stats.presence_ignored, "reason")
        yield CounterMetricFamily("captify_slow_consumer_disconnects_total",
                                  "Connections closed with 1013 for not reading",
                                  value=stats.slow_consumers)
        yield CounterMetricFamily("captify_connections_opened_total",
                                  "Connections accepted", value=stats.connections_opened)
        broker = server.broker
        reconnects = getattr(broker, "reconnects", 0)
        yield CounterMetricFamily("captify_broker_reconnects_total",
                                  "Reconnections to the broker", value=reconnects)
        yield GaugeMetricFamily("captify_broker_up", "1 when the broker is reachable",
                                value=0 if broker is not None and broker.error else 1)
        cluster = server.cluster
        yield GaugeMetricFamily("captify_broker_lag_seconds",
                                "Age of the newest heartbeat of each other instance on arrival "
                                "(broker latency plus clock difference), the largest",
                                value=cluster.max_lag if cluster is not None else 0.0)
        yield GaugeMetricFamily("captify_cluster_instances",
                                "Instances of the cluster seen alive, this one included",
                                value=1 + (len(cluster.instances) if cluster is not None else 0))
        hub = server.channel_services.hub
        yield _counter("captify_channel_events_total",
                       "Channels on this instance: publications made, copies delivered, "
                       "subscribes recovered and not recovered, live gaps repaired, resyncs",
                       hub.counters, "kind")
        yield GaugeMetricFamily("captify_channel_feeds",
                                "Channels with subscribers or listeners on this instance",
                                value=len(hub.feeds.feeds))


def build_registry(server: Server) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    return registry


def snapshot(server: Server, *, top: int = 50) -> dict[str, Any]:
    """Everything the admin dashboard shows, as JSON."""
    stats = server.stats
    rooms = sorted(server.rooms.rooms.values(), key=len, reverse=True)
    cluster = server.cluster
    instances = [{"instance": server.instance_id, "self": True, "last_seen_s": 0.0,
                  "handlers": {name: len(conns) for name, conns in server.connections.items()}}]
    if cluster is not None:
        now = time.monotonic()
        for instance, info in sorted(cluster.instances.items()):
            instances.append({"instance": instance, "self": False,
                              "last_seen_s": round(now - info.last_seen, 1),
                              "handlers": dict(info.handlers)})
    return {
        "instance": server.instance_id,
        "uptime_s": round(time.time() - stats.started_at, 1),
        "handlers": {name: server.handler_connection_count(name) for name in server.connections},
        "documents": [{"documentId": room.document_id, "connections": len(room),
                       "presence": len(room.presence),
                       "stepsVersion": room.steps.version if room.steps else None}
                      for room in rooms[:top]],
        "rooms_loaded": len(server.rooms),
        "messages_in": sum(stats.messages_in.values()),
        "frames_out": stats.frames_out,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "store": {"url": server.store.url, "pending": server.writer.pending,
                  "error": server.writer.error},
        "broker": {"url": server.broker.url if server.broker else "memory",
                   "error": server.broker.error if server.broker else None},
        "instances": instances,
    }
