"""An instance alone with a document on a real Redis (cluster/solitude.py): it stops
publishing, says so on /metrics, and an instance that comes, or a Redis restart, loses
nothing. Two in-process servers with the Redis broker and a fresh prefix each test."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from captify_ws.app import create_app
from captify_ws.server import Server
from tests.cluster.test_solitude import PRESENCE_S, Writer, _alone, _text
from tests.helpers import test_settings as settings_for
from tests.polling import eventually
from tests.services import REDIS_URL, private_redis, require_redis


@contextlib.asynccontextmanager
async def instances(url: str) -> AsyncIterator[tuple[Server, Server]]:
    """A and B on the Redis at ``url`` (a fresh prefix), presence renewed every 20 s only."""
    settings = {"broker": url, "broker_prefix": f"test-alone-{secrets.token_hex(4)}",
                "anti_entropy_s": 0.5, "awareness_flush_ms": 1, "awareness_renewal_s": 20}
    a, b = Server(settings_for(**settings)), Server(settings_for(**settings))
    await a.start()
    try:
        await b.start()
        try:
            yield a, b
        finally:
            await b.stop(timeout=2)
    finally:
        await a.stop(timeout=2)


async def _solitude_metrics(server: Server) -> tuple[float, float]:
    """(``captify_cluster_documents_alone``, ``captify_cluster_publishes_skipped_total``)."""
    transport = httpx.ASGITransport(app=create_app(server=server))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/metrics")
    samples = {sample.name: sample.value
               for family in text_string_to_metric_families(response.text)
               for sample in family.samples}
    return (samples["captify_cluster_documents_alone"],
            samples["captify_cluster_publishes_skipped_total"])


async def test_alone_on_redis_then_a_second_instance_gets_everything() -> None:
    """A's 50 edits and presence while alone are skipped (/metrics); B's client then gets
    all of them and Ann's presence, and edits flow both ways live; A is no longer alone."""
    require_redis()
    async with instances(REDIS_URL) as (a, b):
        ann = Writer(a, "doc", "ann")
        ann.edit("first;")
        await eventually(lambda: _alone(a, "doc"), "A alone with the document")
        for index in range(50):
            ann.edit(f"a{index};")
        ann.presence({"name": "Ann"})
        await eventually(lambda: _text(a, "doc").count(";") == 51, "A's edits at A")

        async def skipped_everything() -> bool:
            alone, skipped = await _solitude_metrics(a)
            return alone == 1 and skipped >= 51  # 50 edits and the presence
        await eventually(skipped_everything, "/metrics to count the skipped publications")
        bob = Writer(b, "doc", "bob")
        await eventually(lambda: _text(b, "doc") == _text(a, "doc"), "A's edits at B")
        await eventually(lambda: bob.presence_of("ann") == {"name": "Ann"}, "Ann's presence",
                         timeout=PRESENCE_S)
        bob.presence({"name": "Bob"})
        bob.edit("b;")
        ann.edit("after;")
        await eventually(lambda: _text(a, "doc") == _text(b, "doc")
                         and "b;" in _text(a, "doc") and "after;" in _text(b, "doc"),
                         "edits both ways")
        await eventually(lambda: ann.presence_of("bob") == {"name": "Bob"}, "Bob's presence",
                         timeout=PRESENCE_S)
        assert (await _solitude_metrics(a))[0] == 0


async def test_a_redis_restart_while_alone_loses_nothing() -> None:
    """Redis goes down; B's client joins meanwhile (B's announcement is lost) while A, alone,
    skips edits and presence; when Redis is back both reconnect and B gets all of it."""
    with private_redis() as redis:
        async with instances(redis.url) as (a, b):
            ann = Writer(a, "doc", "ann")
            ann.edit("first;")
            await eventually(lambda: _alone(a, "doc"), "A alone with the document")
            redis.stop()
            bob = Writer(b, "doc", "bob")
            ann.edit("while-down;")
            ann.presence({"name": "Ann"})
            await eventually(lambda: "while-down;" in _text(a, "doc"), "A's edit at A")
            redis.start()
            await eventually(lambda: _text(b, "doc") == _text(a, "doc"), "A's edits at B")
            await eventually(lambda: bob.presence_of("ann") == {"name": "Ann"},
                             "Ann's presence", timeout=PRESENCE_S + 2)  # + the reconnect
            bob.edit("b;")
            await eventually(lambda: "b;" in _text(a, "doc"), "B's edit at A")
