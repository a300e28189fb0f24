"""Every store keeps history as store/history.py promises: the change feed and versions."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from captify_ws.store import store_from_url
from captify_ws.store.history import HistoryStore, doomed_versions
from tests.services import fresh_database


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    opened = store_from_url(store_url)
    await opened.open()
    assert isinstance(opened, HistoryStore)
    try:
        yield opened
    finally:
        await opened.close()


def _update(text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("t", type=Text).insert(0, text)
    return doc.get_update()


async def test_feed_lists_commits_per_document_in_order(store: Any) -> None:
    """Each committed batch gives one row per document: created first, then changed, with
    the update count and who made them."""
    await store.append_updates([("a", _update("1")), ("b", _update("2")), ("a", _update("3"))],
                               {"a": {"user:ann", "user:bob"}, "b": {"server"}})
    await store.append_updates([("a", _update("4"))], {"a": {"user:ann"}})
    feed = await store.read_feed(0, 100)
    assert [(e.document_id, e.kind, e.updates, e.who) for e in feed] == [
        ("a", "created", 2, ("user:ann", "user:bob")), ("b", "created", 1, ("server",)),
        ("a", "changed", 1, ("user:ann",))]
    assert [e.cursor for e in feed] == sorted({e.cursor for e in feed})
    assert await store.last_cursor() == feed[-1].cursor
    assert await store.read_feed(feed[0].cursor, 1) == [feed[1]]
    assert await store.read_feed(feed[-1].cursor, 100) == []
    assert abs(feed[0].at - time.time()) < 60


async def test_versions_record_who_changed_since_the_previous_one(store: Any) -> None:
    """A version's who is everyone whose updates went in since the previous version; with
    only_if_changed nothing is recorded when nothing was committed since."""
    await store.append_updates([("d", _update("x"))], {"d": {"user:ann"}})
    first = await store.add_version("d", b"state-1", "auto", None)
    assert (first.number, first.who, first.size) == (1, ("user:ann",), 7)
    assert await store.add_version("d", b"state-1", "auto", None, only_if_changed=True) is None
    await store.append_updates([("d", _update("y"))], {"d": {"user:bob"}})
    await store.append_updates([("e", _update("z"))], {"e": {"user:eve"}})
    second = await store.add_version("d", b"state-2", "named", "draft", who=["user:cat"])
    assert (second.number, second.name, second.who) == (2, "draft", ("user:bob", "user:cat"))
    feed = await store.read_feed(0, 100)
    assert [(e.kind, e.version) for e in feed if e.document_id == "d"][-1] == ("version", 2)
    assert [v.number for v in await store.list_versions("d", None, 10)] == [2, 1]
    assert [v.number for v in await store.list_versions("d", 2, 10)] == [1]
    got = await store.get_version("d", 1)
    assert got is not None and got.state == b"state-1" and got.info == first
    assert await store.get_version("d", 3) is None
    assert await store.get_version("nope", 1) is None


async def test_delete_is_in_the_feed_and_drops_versions(store: Any) -> None:
    """Deleting a document writes a deleted entry and forgets its versions."""
    await store.append_updates([("gone", _update("x"))])
    await store.add_version("gone", b"s", "named", "kept")
    assert await store.delete_document("gone")
    assert (await store.read_feed(0, 100))[-1].kind == "deleted"
    assert await store.list_versions("gone", None, 10) == []
    assert not await store.delete_document("gone")
    assert [e.kind for e in await store.read_feed(0, 100)] == ["created", "version", "deleted"]


async def test_retention_prunes_automatic_versions_only(store: Any) -> None:
    """prune_versions keeps the newest automatic versions and every named one."""
    for index in range(5):
        await store.append_updates([("r", _update(str(index)))])
        await store.add_version("r", b"s", "named" if index == 1 else "auto", None)
    assert await store.prune_versions("r", 2, 0) == 2
    assert [v.number for v in await store.list_versions("r", None, 10)] == [5, 4, 2]
    assert await store.prune_versions("r", 0, time.time() + 1) == 2
    assert [v.number for v in await store.list_versions("r", None, 10)] == [2]


@pytest.mark.unit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0, 100), max_size=12), st.integers(0, 5), st.floats(0, 120))
def test_retention_rule(ages: list[float], keep: int, older_than: float) -> None:
    """doomed_versions: past the newest keep, or older than the age limit; nothing else."""
    newest_first = [(len(ages) - rank, at) for rank, at in enumerate(ages)]
    doomed = set(doomed_versions(newest_first, keep, older_than))
    for rank, (number, at) in enumerate(newest_first):
        expected = bool(keep and rank >= keep) or bool(older_than and at < older_than)
        assert (number in doomed) == expected


async def test_paging_is_gap_free_while_two_writers_commit(store_url: str) -> None:
    """Two store connections (two instances) commit while a reader pages by cursor: the
    pages, joined, are exactly the whole feed read afterwards."""
    writers = [store_from_url(store_url) for _ in range(2)] if store_url != "memory" else []
    reader = store_from_url(store_url) if writers else None
    if reader is None:
        memory = store_from_url("memory")
        writers, reader = [memory, memory], memory
    for opened in {id(s): s for s in [*writers, reader]}.values():
        await opened.open()
    stop = asyncio.Event()

    async def write(index: int, writer: Any) -> None:
        rng = random.Random(index)
        count = 0
        while not stop.is_set() or count < 20:
            batch = [(f"doc-{rng.randrange(6)}", _update(str(count))) for _ in range(3)]
            await writer.append_updates(batch, {doc: {f"user:{index}"} for doc, _ in batch})
            count += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(write(i, w)) for i, w in enumerate(writers)]
    seen: list[Any] = []
    cursor = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        page = await reader.read_feed(cursor, 7)
        seen.extend(page)
        cursor = page[-1].cursor if page else cursor
        await asyncio.sleep(0)
    stop.set()
    await asyncio.gather(*tasks)
    while page := await reader.read_feed(cursor, 50):
        seen.extend(page)
        cursor = page[-1].cursor
    whole = []
    cursor = 0
    while page := await reader.read_feed(cursor, 1000):
        whole.extend(page)
        cursor = page[-1].cursor
    assert len(whole) > 40
    assert seen == whole
    for opened in {id(s): s for s in [*writers, reader]}.values():
        await opened.close()


async def test_webhook_outbox_orders_per_document_and_leases(store: Any) -> None:
    """Deliveries are created with the cursor's compare-and-set; a claim gives the oldest
    pending delivery of each endpoint and document, leased; outcomes and redelivery."""
    from captify_ws.store.webhooks import NewDelivery

    now = time.time()

    def new(event_id: str, document_id: str) -> NewDelivery:
        return NewDelivery(event_id, "http://x/hook", document_id, "document.changed", "{}",
                           now)
    assert await store.webhook_cursor() == 0
    assert await store.enqueue_deliveries(0, 5, [new("a1", "a"), new("a2", "a"),
                                                 new("b1", "b")])
    assert not await store.enqueue_deliveries(0, 9, [new("lost", "a")])
    assert await store.webhook_cursor() == 5
    claimed = await store.claim_deliveries(now, 30, 10)
    assert [d.event_id for d in claimed] == ["a1", "b1"]
    assert await store.claim_deliveries(now, 30, 10) == []
    a1, b1 = claimed
    await store.finish_delivery(a1.id, "delivered", 1, now, 200, None, now)
    await store.finish_delivery(b1.id, "pending", 1, now + 60, 500, "HTTP 500", now)
    assert [d.event_id for d in await store.claim_deliveries(now, 30, 10)] == ["a2"]
    assert [d.event_id for d in await store.claim_deliveries(now + 61, 30, 10)] == ["a2",
                                                                                     "b1"]
    await store.finish_delivery(b1.id, "failed", 2, now, 500, "HTTP 500", now)
    failed = await store.list_deliveries("failed", None, 10)
    assert [(d.event_id, d.attempts, d.last_error) for d in failed] == [("b1", 2, "HTTP 500")]
    assert await store.redeliver(b1.id, now)
    assert not await store.redeliver(999999, now)
    counts = await store.delivery_counts()
    assert counts == {"pending": 2, "delivered": 1, "failed": 0}  # a2 (lease ended), b1


async def test_old_feed_entries_and_finished_deliveries_are_pruned(store: Any) -> None:
    """prune_feed deletes entries older than the limit but none the webhooks have not read;
    cursors are never reused; prune_deliveries keeps pending deliveries."""
    from captify_ws.store.webhooks import NewDelivery

    for index in range(4):
        await store.append_updates([(f"d{index}", _update("x"))])
    feed = await store.read_feed(0, 10)
    assert await store.prune_feed(time.time() + 1, feed[1].cursor) == 2
    assert [e.cursor for e in await store.read_feed(0, 10)] == [e.cursor for e in feed[2:]]
    assert await store.prune_feed(time.time() + 1, None) == 2
    await store.append_updates([("later", _update("y"))])
    assert (await store.read_feed(0, 10))[0].cursor > feed[-1].cursor
    assert await store.prune_feed(time.time() - 3600, None) == 0
    now = time.time()
    await store.enqueue_deliveries(None, 0, [
        NewDelivery(f"e{i}", "http://x/hook", "d", "document.changed", "{}", now)
        for i in range(3)])
    [first] = await store.claim_deliveries(now, 30, 10)
    await store.finish_delivery(first.id, "delivered", 1, now, 200, None, now)
    assert await store.prune_deliveries(now + 1) == 1
    assert (await store.delivery_counts())["pending"] == 2


async def test_the_first_cursor_is_the_highest_pruned_and_survives_a_restart(
        store_url: str) -> None:
    """first_cursor: 0 before any pruning, then the highest cursor prune_feed deleted; a
    prune that deletes nothing (or only lower cursors) never lowers it; it is kept in the
    store (a reopened SQLite/PostgreSQL store still knows it)."""
    store: Any = store_from_url(store_url)
    await store.open()
    try:
        assert await store.first_cursor() == 0
        for index in range(6):
            await store.append_updates([(f"d{index}", _update("x"))])
        feed = await store.read_feed(0, 10)
        assert await store.prune_feed(time.time() - 3600, None) == 0
        assert await store.first_cursor() == 0
        assert await store.prune_feed(time.time() + 1, feed[2].cursor) == 3
        assert await store.first_cursor() == feed[2].cursor
        assert await store.prune_feed(time.time() + 1, feed[1].cursor) == 0
        assert await store.first_cursor() == feed[2].cursor
        assert await store.prune_feed(time.time() + 1, None) == 3
        assert await store.first_cursor() == feed[5].cursor
    finally:
        await store.close()
    if store_url != "memory":
        reopened: Any = store_from_url(store_url)
        await reopened.open()
        try:
            assert await reopened.first_cursor() == feed[5].cursor
        finally:
            await reopened.close()


async def test_versions_keep_their_yjs_clients(store: Any) -> None:
    """The Yjs client ids a version names come back from list and get."""
    await store.append_updates([("c", _update("x"))])
    big = 2**53 - 1
    info = await store.add_version("c", b"s", "named", None, clients={7: "user:a",
                                                                      big: "agent:z"})
    assert info.clients == {7: "user:a", big: "agent:z"}
    assert (await store.list_versions("c", None, 5))[0].clients == info.clients
    got = await store.get_version("c", info.number)
    assert got is not None and got.info.clients == info.clients
    plain = await store.add_version("c", b"s", "named", None)
    assert plain.clients == {}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_claim_gives_the_due_head_of_every_endpoint_and_document(store: Any,
                                                                         seed: int) -> None:
    """Generated outboxes (endpoints x documents, deliveries finished as delivered, retried
    later or failed, claims with small limits): every claim is exactly the model's — the
    oldest pending delivery of each endpoint and document, if due and not leased, in id
    order, at most ``limit`` — so SQLite's one-pass head query (the correlated NOT EXISTS
    cost 350-700 ms per claim behind 37,000 waiting deliveries) keeps the order rules."""
    from captify_ws.store.webhooks import NewDelivery

    rng = random.Random(seed)
    now = time.time()
    model: dict[int, dict[str, Any]] = {}  # id → endpoint, document, status, next_at, lease
    by_event: dict[str, int] = {}
    cursor = 0
    for _round in range(12):
        fresh = [NewDelivery(f"e{cursor}-{i}", f"http://127.0.0.1/{rng.randrange(3)}",
                             f"d{rng.randrange(4)}", "document.changed", "{}",
                             now + rng.choice([0, 0, 5])) for i in range(rng.randrange(1, 15))]
        assert await store.enqueue_deliveries(cursor, cursor + 1, fresh)
        cursor += 1
        listed = await store.list_deliveries(None, None, 1000)
        for delivery in listed:
            if delivery.event_id not in by_event:
                by_event[delivery.event_id] = delivery.id
                model[delivery.id] = {"endpoint": delivery.endpoint,
                                      "document": delivery.document_id, "status": "pending",
                                      "next_at": delivery.next_at, "lease": 0.0}
        now += rng.choice([0, 1, 6])
        limit = rng.randrange(1, 8)
        heads: dict[tuple[str, str], int] = {}
        for number in sorted(model):
            row = model[number]
            if row["status"] == "pending":
                heads.setdefault((row["endpoint"], row["document"]), number)
        expected = sorted(n for n in heads.values()
                          if model[n]["next_at"] <= now and model[n]["lease"] <= now)[:limit]
        claimed = await store.claim_deliveries(now, 30, limit)
        assert [d.id for d in claimed] == expected, (seed, _round)
        for delivery in claimed:
            model[delivery.id]["lease"] = now + 30
            outcome = rng.choice(["delivered", "pending", "failed", "leased"])
            if outcome == "leased":
                continue
            next_at = now + rng.choice([0, 3]) if outcome == "pending" else now
            await store.finish_delivery(delivery.id, outcome, 1, next_at, 200, None, now)
            model[delivery.id].update(status=outcome, next_at=next_at, lease=0.0)


async def test_a_claim_keeps_each_endpoint_within_its_bound(store: Any) -> None:
    """claim_deliveries(per_endpoint=n, busy=…) gives an endpoint at most n minus what is
    in flight there, even when its due deliveries are the oldest: the others still get
    theirs in the same claim."""
    from captify_ws.store.webhooks import NewDelivery

    now = time.time()
    await store.enqueue_deliveries(None, 0, [
        NewDelivery(f"h{i}", "http://hang/hook", f"d{i}", "document.changed", "{}", now)
        for i in range(10)])
    await store.enqueue_deliveries(None, 0, [
        NewDelivery(f"k{i}", "http://ok/hook", f"d{i}", "document.changed", "{}", now)
        for i in range(3)])
    claimed = await store.claim_deliveries(now, 30, 5, 3, {"http://hang/hook": 1})
    assert [d.event_id for d in claimed] == ["h0", "h1", "k0", "k1", "k2"]
    assert [d.event_id for d in await store.claim_deliveries(now, 30, 5, 3, {})] == \
        ["h2", "h3", "h4"]
