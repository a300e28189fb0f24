"""GET /api/v1/changes: every committed document change, in order, resumable by cursor."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from captify_ws.store import store_from_url
from tests.helpers import RunningServer, json_client, running_server
from tests.services import fresh_database

KEY = {"Authorization": "Bearer k"}


async def _page(http: httpx.AsyncClient, srv: RunningServer, since: int,
                limit: int) -> dict[str, Any]:
    response = await http.get(f"{srv.http}/api/v1/changes",
                              params={"since": since, "limit": limit}, headers=KEY)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _read_all(http: httpx.AsyncClient, srv: RunningServer) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = await _page(http, srv, cursor, 1000)
        if not page["changes"]:
            return entries
        entries.extend(page["changes"])
        cursor = page["next"]


async def test_ten_thousand_edits_on_a_hundred_documents(tmp_path: Path) -> None:
    """10,000 edits over 100 JSON connections: the feed from cursor 0 lists every document,
    every update counted once, cursors increasing; a reader paging by 37 while the edits go
    on sees exactly what a reader from 0 sees afterwards."""
    store = store_from_url(f"sqlite:///{tmp_path}/feed.db")
    async with running_server(api_key="k", store=store) as srv, \
            httpx.AsyncClient(timeout=30) as http, contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(json_client(srv, f"doc-{i:03}"))
                   for i in range(100)]
        seen: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def page_along() -> None:
            cursor = 0
            while True:
                finished = done.is_set()
                page = await _page(http, srv, cursor, 37)
                seen.extend(page["changes"])
                cursor = page["next"]
                if finished and not page["changes"]:
                    return
                if not page["changes"]:
                    await asyncio.sleep(0.01)

        reader = asyncio.create_task(page_along())
        for round_ in range(100):
            await asyncio.gather(*(client.edit(f"{round_},") for client in clients))
        for client in clients:
            await client.sync()  # the server has applied every edit before answering
        await srv.server.writer.flush()
        done.set()
        await asyncio.wait_for(reader, 30)
        whole = await _read_all(http, srv)
        assert seen == whole
        assert [e["cursor"] for e in whole] == sorted({e["cursor"] for e in whole})
        per_document: dict[str, int] = {}
        for entry in whole:
            assert entry["kind"] in ("created", "changed")
            assert entry["who"] == ["anonymous"]
            per_document[entry["documentId"]] = per_document.get(entry["documentId"], 0) \
                + entry["updates"]
        assert per_document == {f"doc-{i:03}": 100 for i in range(100)}
        firsts = {}
        for entry in whole:
            firsts.setdefault(entry["documentId"], entry["kind"])
        assert set(firsts.values()) == {"created"}


async def test_deleted_documents_are_in_the_feed() -> None:
    """DELETE of a document appends a deleted entry after its changes."""
    async with running_server(api_key="k", version_idle_s=0) as srv, \
            httpx.AsyncClient() as http:
        async with json_client(srv, "short-lived") as client:
            await client.edit("x")
            await client.sync()
        await srv.server.writer.flush()
        response = await http.delete(f"{srv.http}/api/v1/documents/short-lived", headers=KEY)
        assert response.status_code == 200
        kinds = [(e["documentId"], e["kind"]) for e in await _read_all(http, srv)]
        assert kinds == [("short-lived", "created"), ("short-lived", "deleted")]


@pytest.mark.parametrize(("query", "message"), [
    ("since=-1", "'since' must be from 0"), ("since=abc", "'since' must be an integer"),
    ("limit=0", "'limit' must be from 1 to 1000"), ("limit=5000", "'limit' must be from 1"),
])
async def test_bad_cursor_or_limit_is_a_clear_400(query: str, message: str) -> None:
    """A cursor or limit that cannot be one answers 400 naming the parameter."""
    async with running_server(api_key="k") as srv, httpx.AsyncClient() as http:
        response = await http.get(f"{srv.http}/api/v1/changes?{query}", headers=KEY)
        assert response.status_code == 400
        assert message in response.json()["error"]
        assert (await http.get(f"{srv.http}/api/v1/changes")).status_code == 401


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/feed.db"
    else:
        with fresh_database() as url:
            yield url


async def test_a_cursor_older_than_the_kept_entries_is_410_naming_the_oldest(
        store_url: str) -> None:
    """Retention (history_log_keep_s) deletes old feed entries; a reader whose cursor was
    below them got the later page as if nothing was missing. Now every cursor below the
    highest pruned one (generated around the boundary, 0 included) answers 410 ``too_old``
    naming it, and every cursor from it on pages on with no gap, on every store."""
    store = store_from_url(store_url)
    async with running_server(api_key="k", store=store, version_idle_s=0) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=10) as http:
        for index in range(12):
            doc = Doc()
            doc.get("text", type=Text).insert(0, f"doc {index}")
            body = {"update": base64.b64encode(doc.get_update()).decode()}
            response = await http.post(f"/api/v1/documents/d{index}/updates", json=body)
            assert response.status_code == 200, response.text
        await srv.server.writer.flush()
        whole = await _read_all(http, srv)
        cursors = [entry["cursor"] for entry in whole]
        assert len(cursors) == 12
        oldest = cursors[4]
        assert await store.prune_feed(time.time() + 1, oldest) == 5  # type: ignore[attr-defined]
        rng = random.Random(19)
        below = {0, oldest - 1, cursors[0], cursors[3], *(rng.randrange(oldest)
                                                           for _ in range(8))}
        for since in sorted(below):
            refused = await http.get(f"/api/v1/changes?since={since}&limit=3")
            assert refused.status_code == 410, (since, refused.text)
            assert refused.json() == {
                "error": f"'since' {since} is older than the feed keeps (entries up to "
                         f"{oldest} were pruned by history_log_keep_s): the oldest cursor "
                         f"available is {oldest}",
                "code": "too_old", "oldest": oldest}
        for since in sorted({oldest, *cursors[4:], *(rng.randrange(oldest, cursors[-1] + 1)
                                                     for _ in range(8))}):
            page = await _page(http, srv, since, 3)
            assert page["changes"] == [e for e in whole if e["cursor"] > since][:3], since
