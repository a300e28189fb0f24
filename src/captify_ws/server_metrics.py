"""The Prometheus exposition (prometheus-client) and the admin dashboard's snapshot of a
running server, built from its :class:`~captify_ws.metrics.Stats` and live state at scrape time,
in a registry of the server's own (no global registry). Metrics carry no document ids:
per-document figures are on the admin dashboard, behind its key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from captify_ws.metrics import Histogram

if TYPE_CHECKING:
    from captify_ws.server import Server


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
        limits = server.connection_limits
        yield GaugeMetricFamily("captify_inbound_bytes",
                                "Bytes of partly received messages held for all connections "
                                "(bounded by max_inbound_bytes)", value=limits.inbound.total)
        yield CounterMetricFamily("captify_inbound_refusals_total",
                                  "Connections closed (1009) because partly received messages "
                                  "of all connections passed max_inbound_bytes",
                                  value=limits.inbound.refusals)
        yield GaugeMetricFamily("captify_outbound_bytes",
                                "Bytes waiting to be sent to all connections (bounded by "
                                "max_outbound_bytes)", value=limits.outbound.total)
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
        yield _counter("captify_worker_handoffs_total",
                       "WebSockets moved between --workers to their document's worker: 'sent', "
                       "'received', 'returned' (the owner had enough of that document's), "
                       "'kept' (the owner was not reading)", stats.worker_handoffs, "outcome")
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
        solitude = cluster.solitude if cluster is not None else None
        yield GaugeMetricFamily("captify_cluster_documents_alone",
                                "Loaded documents no other instance subscribes to (their updates "
                                "and presence changes are not published)",
                                value=len(solitude.alone) if solitude is not None else 0)
        yield CounterMetricFamily("captify_cluster_publishes_skipped_total",
                                  "Updates and presence changes not published: no other "
                                  "instance subscribed to their document",
                                  value=solitude.skipped if solitude is not None else 0)
        hub = server.channel_services.hub
        yield _counter("captify_channel_events_total",
                       "Channels on this instance: publications made, copies delivered, "
                       "subscribes recovered and not recovered, live gaps repaired, resyncs",
                       hub.counters, "kind")
        yield GaugeMetricFamily("captify_channel_feeds",
                                "Channels with subscribers or listeners on this instance",
                                value=len(hub.feeds.feeds))
        agent = server.registry.by_name("agent")
        runs = getattr(agent, "runs", None)
        if runs is not None:
            yield _counter("captify_agent_events_total",
                           "Agent runs on this instance: tokens given to agent_run() and the "
                           "token publications made of them (their ratio is the coalescing "
                           "factor), cancels, runs failed for a silent producer, snapshots "
                           "folded and the publications read to fold them",
                           runs.counters, "kind")
            sessions = getattr(agent, "sessions", None)
            yield GaugeMetricFamily("captify_agent_sessions_open",
                                    "Agent sessions opened over HTTP and not ended",
                                    value=len(sessions.open) if sessions is not None else 0)


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
