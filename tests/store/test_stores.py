"""Every DocumentStore keeps the promises written in store/base.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text

from captify_ws.errors import StoreError
from captify_ws.store import store_from_url
from captify_ws.store.base import DocumentStore
from captify_ws.store.sqlite import migrate_sqlite
from tests.services import fresh_database

pytestmark = pytest.mark.unit


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[DocumentStore]:
    opened = store_from_url(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _updates(count: int, text: str = "x") -> tuple[Doc[Any], list[bytes]]:
    doc: Doc[Any] = Doc()
    body = doc.get("t", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for index in range(count):
        body.insert(len(body), f"{text}{index};")
    return doc, updates


def _text(update: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return str(doc.get("t", type=Text))


async def test_unknown_document_loads_as_none(store: DocumentStore) -> None:
    """load() of a document never stored is None."""
    assert await store.load("never") is None


async def test_appended_updates_load_in_order(store: DocumentStore) -> None:
    """Everything appended is loaded back, across documents, in one batch."""
    doc, updates = _updates(20)
    await store.append_updates([("a", u) for u in updates[:10]] + [("b", updates[0])])
    await store.append_updates([("a", u) for u in updates[10:]])
    loaded = await store.load("a")
    assert loaded is not None and loaded.snapshot is None
    assert loaded.updates == updates
    assert _text(loaded.as_update()) == str(doc.get("t", type=Text))
    assert sorted(await store.list_documents()) == ["a", "b"]


async def test_compaction_merges_the_log(store: DocumentStore) -> None:
    """compact() replaces the log by one snapshot; later appends are kept."""
    doc, updates = _updates(50)
    await store.append_updates([("c", u) for u in updates[:40]])
    assert await store.compact("c") == 40
    await store.append_updates([("c", u) for u in updates[40:]])
    loaded = await store.load("c")
    assert loaded is not None and loaded.snapshot is not None
    assert len(loaded.updates) == 10
    assert _text(loaded.as_update()) == str(doc.get("t", type=Text))
    assert await store.compact("c") == 10
    assert await store.compact("c") == 0
    assert await store.compact("nothing") == 0


async def test_delete(store: DocumentStore) -> None:
    """delete_document() removes a document; True only if it existed."""
    _, updates = _updates(3)
    await store.append_updates([("gone", u) for u in updates])
    assert await store.delete_document("gone") is True
    assert await store.load("gone") is None
    assert await store.delete_document("gone") is False


async def test_one_megabyte_document_round_trips(store: DocumentStore) -> None:
    """A 1 MB document survives append, compaction and load byte-for-byte in content."""
    doc: Doc[Any] = Doc()
    doc.get("t", type=Text).insert(0, "0123456789abcdef" * 65536)
    state = doc.get_update()
    assert len(state) > 1_000_000
    await store.append_updates([("big", state)])
    await store.compact("big")
    loaded = await store.load("big")
    assert loaded is not None
    assert _text(loaded.as_update()) == "0123456789abcdef" * 65536


async def test_check_passes_when_open(store: DocumentStore) -> None:
    """check() is quiet on a working store."""
    await store.check()


async def test_sqlite_opens_twice_and_upgrades_an_older_schema(tmp_path: Path) -> None:
    """A file written with schema version 1 is migrated on open, its documents intact; a
    second start works."""
    path = tmp_path / "old.db"
    doc, updates = _updates(30)
    raw = sqlite3.connect(path, isolation_level=None)
    assert migrate_sqlite(raw, target=1) == 1
    raw.execute("INSERT INTO captify_documents (id, snapshot, created_at, updated_at) "
                "VALUES ('kept', NULL, 0, 0)")
    raw.executemany("INSERT INTO captify_updates (document_id, data) VALUES ('kept', ?)",
                    [(update,) for update in updates])
    raw.close()
    for _ in range(2):
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        loaded = await store.load("kept")
        assert loaded is not None
        assert _text(loaded.as_update()) == str(doc.get("t", type=Text))
        await store.append_updates([("new", updates[0])])
        await store.close()
    raw = sqlite3.connect(path)
    version = raw.execute("SELECT value FROM captify_meta WHERE key='schema_version'").fetchone()
    raw.close()
    from captify_ws.store.schema import SQLITE_MIGRATIONS
    assert int(version[0]) == len(SQLITE_MIGRATIONS)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A store written by a newer captify-ws is refused with a clear error."""
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE captify_meta (key TEXT PRIMARY KEY, value TEXT)")
    raw.execute("INSERT INTO captify_meta VALUES ('schema_version', '999')")
    raw.close()
    store = store_from_url(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="newer than this captify-ws"):
        await store.open()


async def test_postgres_unreachable_names_the_url() -> None:
    """Opening a PostgreSQL store that is not there fails with the URL (password masked)."""
    from tests.services import free_port

    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/nothing"
    store = store_from_url(url)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "postgresql://postgres:***@127.0.0.1" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_revocations_are_kept_until_they_expire(store: DocumentStore) -> None:
    """save_revocation replaces the user's earlier one; load_revocations returns those not yet
    expired (issue 13.8)."""
    now = time.time()
    await store.save_revocation("doc", "dave", "read", now + 60)
    await store.save_revocation("doc", "dave", "none", now + 120)
    await store.save_revocation("doc", "erin", "none", now - 1)
    await store.save_revocation("other", "dave", "read", now + 30)
    got = sorted(await store.load_revocations())
    assert [(d, u, a) for d, u, a, _ in got] == [("doc", "dave", "none"),
                                                  ("other", "dave", "read")]
    assert abs(got[0][3] - (now + 120)) < 1e-3


async def test_agent_sessions_are_kept_and_listed_per_document(store: DocumentStore) -> None:
    """Saved records are listed per document oldest first, replaced by a later save of the
    same session, loaded by id; end_agent_sessions ends the open ones of one instance (or
    all) and only those."""
    import dataclasses

    from captify_ws.store.agent_sessions import AgentSessionRecord, AgentSessionStore

    assert isinstance(store, AgentSessionStore)
    one = AgentSessionRecord("s1", "d", 3_000_000_000, "Bot", "#fff", "u-1", "r-1", "i-a", 10)
    two = AgentSessionRecord("s2", "d", 3_000_000_001, "Ünï", "#000", None, None, "i-b", 20)
    other = AgentSessionRecord("s3", "e", 7, "X", "#111", None, None, "i-a", 5)
    for record in (two, one, other):
        await store.save_agent_session(record)
    assert await store.list_agent_sessions("d") == [one, two]
    done = dataclasses.replace(one, ended_at=15, reverted=True, before_version=4)
    await store.save_agent_session(done)
    assert await store.list_agent_sessions("d") == [done, two]
    assert await store.load_agent_session("s1") == done
    assert await store.load_agent_session("nope") is None
    assert await store.end_agent_sessions("i-a", 99) == 1  # s3 (s1 was ended already)
    assert (await store.load_agent_session("s3")) == dataclasses.replace(other, ended_at=99)
    assert (await store.load_agent_session("s2")).ended_at is None  # type: ignore[union-attr]
    assert await store.end_agent_sessions(None, 100) == 1
    assert [r.ended_at for r in await store.list_agent_sessions("d")] == [15, 100]
    assert await store.prune_agent_sessions(99) == 1  # s1 ended at 15, not s2 nor s3
    assert [r.session_id for r in await store.list_agent_sessions("d")] == ["s2"]
    assert await store.load_agent_session("s3") is not None
