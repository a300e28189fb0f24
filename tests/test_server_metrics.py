"""The Prometheus exposition and the admin snapshot (server_metrics.py) tell what happened:
scraped through the ASGI app from two bridged in-process instances."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Doc, Text

from captify_ws.app import create_app
from captify_ws.connection import UpgradeRequest
from captify_ws.errors import Reject
from captify_ws.protocol import ywebsocket
from captify_ws.server import Server
from captify_ws.server_metrics import snapshot
from tests.inprocess import InProcessClient, two_instances
from tests.polling import eventually

pytestmark = pytest.mark.unit


async def _scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    transport = httpx.ASGITransport(app=create_app(server=server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def _update(text: str) -> bytes:
    """The y-websocket message inserting ``text`` (the same bytes for the same text)."""
    doc: Doc[Any] = Doc(client_id=7)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    shared = doc.get("t", type=Text)
    shared += text
    return ywebsocket.encode_sync_update(updates[0])


async def test_metrics_count_connections_messages_refusals_and_instances() -> None:
    """After two clients, one update and one refused origin, A's /metrics says so, and it
    counts B as an instance of the cluster."""
    async with two_instances(allowed_origins=("https://app.example.com",)) as (a, b, _):
        writer = InProcessClient(a, "/ws/fabric/m-doc")
        reader = InProcessClient(a, "/ws/fabric/m-doc")
        InProcessClient(b, "/ws/fabric/m-doc")
        await eventually(lambda: writer.frames and reader.frames, "both clients joined")
        writer.send(_update("counted"))
        await eventually(lambda: _update("counted") in reader.binaries(), "the relayed update")
        with pytest.raises(Reject):
            a.admit(UpgradeRequest("/ws/fabric", "", [("origin", "https://evil.net")]))
        await a.writer.flush()

        async def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            metrics = await _scrape(a)
            return metrics if metrics[("captify_cluster_instances", ())] == 2 else None

        metrics = await eventually(scraped, "B in A's cluster_instances")
        assert metrics[("captify_connections", (("handler", "fabric"),))] == 2
        assert metrics[("captify_connections_opened_total", ())] == 2
        assert metrics[("captify_rooms_loaded", ())] == 1
        assert metrics[("captify_auth_refusals_total", (("reason", "origin"),))] == 1
        assert metrics[("captify_store_pending_writes", ())] == 0
        assert metrics[("captify_store_up", ())] == 1
        assert metrics[("captify_broker_up", ())] == 1
        assert metrics[("captify_bytes_received_total", ())] >= len(_update("counted"))
        assert sum(value for (name, _), value in metrics.items()
                   if name == "captify_messages_received_total") >= 1
        assert sum(value for (name, _), value in metrics.items()
                   if name == "captify_broadcast_copies_total") >= 1
        assert metrics[("captify_store_write_seconds_count", ())] >= 1


async def test_the_admin_snapshot_lists_documents_and_instances() -> None:
    """The dashboard's snapshot lists the loaded document with its connections, and the
    other instance with its handlers' counts."""
    async with two_instances() as (a, b, _):
        clients = [InProcessClient(a, "/ws/fabric/s-doc"), InProcessClient(b, "/ws/fabric/s-doc")]
        await eventually(lambda: all(c.frames for c in clients), "both clients joined")

        def other_instance_seen() -> dict[str, Any] | None:
            view = snapshot(a)
            others = [i for i in view["instances"] if not i["self"]]
            return view if others and others[0]["handlers"].get("fabric") == 1 else None

        view = await eventually(other_instance_seen, "B with its client in A's snapshot")
        assert view["instance"] == a.instance_id
        assert view["documents"] == [{"documentId": "s-doc", "connections": 1, "presence": 0,
                                      "stepsVersion": None}]
        assert view["handlers"]["fabric"] == 2
