"""Hostile and careless input to the history, webhook and agent HTTP routes: every request
gets a clear answer (a 4xx with an error, never a 500 or a 503), nothing is logged as a
failure, and the server goes on serving."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pycrdt import Doc, Text

from captify_ws.store import DocumentStore, store_from_url
from captify_ws.store.history import MAX_ID, MAX_VERSION
from tests.helpers import running_server
from tests.services import free_port, fresh_database

KEY = {"Authorization": "Bearer k"}


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged as a failure (a 500's traceback, a 503's error id)."""
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("captify_ws")
            and (record.levelno >= logging.ERROR or hasattr(record, "error_id"))]


def _out_of_range(seed: int, count: int) -> list[int]:
    """Numbers no version or delivery can have: the edges, then random magnitudes up to 10**40."""
    rng = random.Random(seed)
    numbers = [MAX_VERSION + 1, 2**63 - 1, 2**63, 2**64, 10**30]
    numbers += [rng.randrange(MAX_VERSION + 1, 10 ** rng.randint(10, 40)) for _ in range(count)]
    return numbers


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "postgresql"])
async def test_version_and_delivery_numbers_out_of_range_are_404(
        tmp_path: Path, store_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """GET …/versions/99999999999999999999 answered 500 on SQLite (OverflowError in the
    query, a traceback in the log); now every number a store cannot hold is 404 like any
    other unknown version, on the version, restore and redelivery routes."""
    with contextlib.ExitStack() as stack:
        url = {"memory": "memory", "sqlite": f"sqlite:///{tmp_path}/h.db"}.get(store_kind) \
            or stack.enter_context(fresh_database())
        await _numbers_out_of_range(store_from_url(url), caplog)


async def _numbers_out_of_range(store: DocumentStore, caplog: pytest.LogCaptureFixture) -> None:
    hook = f"http://127.0.0.1:{free_port()}/nobody"  # refused: deliveries stay pending
    caplog.set_level(logging.WARNING)
    async with running_server(api_key="k", store=store, webhook_urls=(hook,),
                              version_idle_s=60) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=10) as http:
        doc = Doc()
        doc.get("text", type=Text).insert(0, "kept")
        update = {"update": base64.b64encode(doc.get_update()).decode()}
        assert (await http.post("/api/v1/documents/d/updates", json=update)).status_code == 200
        assert (await http.post("/api/v1/documents/d/versions")).status_code == 201
        for number in _out_of_range(seed=19, count=20):
            got = await http.get(f"/api/v1/documents/d/versions/{number}")
            assert got.status_code == 404, (number, got.text)
            assert got.json() == {"error": f"document 'd' has no version {number}",
                                  "code": 404}
            restore = await http.post(f"/api/v1/documents/d/versions/{number}/restore")
            assert restore.status_code == 404, (number, restore.text)
            redeliver = await http.post(f"/api/v1/webhooks/deliveries/{number + MAX_ID}"
                                        "/redeliver")
            assert redeliver.status_code == 404, (number, redeliver.text)
            diff = await http.get(f"/api/v1/documents/d/diff?from=1&to={number}")
            assert diff.status_code == 400, (number, diff.text)
        assert (await http.get("/api/v1/documents/d/versions/1")).json()["text"] == \
            {"text": "kept"}
        assert (await http.get("/healthz")).status_code == 200
    assert _failures(caplog) == []


def _ndjson(event: str, **data: object) -> bytes:
    return json.dumps({"event": event, "data": data}).encode() + b"\n"


async def _chunks(piece: bytes, total: int) -> AsyncIterator[bytes]:
    """``piece`` repeated up to ``total`` bytes, chunked (no Content-Length to refuse early)."""
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


async def test_a_chunked_body_past_the_limit_is_413_on_every_route(
        caplog: pytest.LogCaptureFixture) -> None:
    """An NDJSON stream to /api/v1/agent/runs/…/events that grew past max_message_size was
    answered 503 'temporarily unavailable' with an error id (the body-size refusal was
    caught as an unexpected failure); every route that reads a body now answers 413 with the
    limit, whatever the body's content, and the lines before the limit stay published."""
    caplog.set_level(logging.WARNING)
    limit = 64 << 10
    async with running_server(api_key="k", max_message_size=limit) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=20) as http:
        session = await http.post("/api/v1/agent/sessions", json={"document_id": "s"})
        sid = session.json()["session_id"]
        token = _ndjson("token", message_id="m", delta="x" * 200)
        cases: list[tuple[str, bytes, bytes, dict[str, str]]] = [
            ("/api/v1/agent/runs/big/events", _ndjson("run.started"), token,
             {"Content-Type": "application/x-ndjson"}),
            (f"/api/v1/agent/sessions/{sid}/insert", b'{"anchor": 0}\n',
             b'{"text": "' + b"y" * 200 + b'"}\n', {"Content-Type": "application/x-ndjson"}),
            ("/api/v1/publish", b'{"channel": "c", "data": "', b"z" * 1000, {}),
            ("/api/v1/documents/s/versions", b'{"name": "', b"n" * 1000, {}),
            ("/api/v1/documents/s/updates", b"", b"\0" * 1000, {}),
        ]
        for path, head, piece, headers in cases:
            async def body(head: bytes = head, piece: bytes = piece) -> AsyncIterator[bytes]:
                yield head
                async for chunk in _chunks(piece, 2 * limit):
                    yield chunk
            answer = await http.post(path, content=body(), headers=headers)
            assert answer.status_code == 413, (path, answer.text)
            assert f"body larger than {limit} bytes" in answer.json()["error"], path
        run = (await http.get("/api/v1/agent/runs/big")).json()["run"]
        assert run["status"] == "running" and len(run["messages"][0]["text"]) > 200 * 100
        assert (await http.get("/healthz")).status_code == 200
    assert _failures(caplog) == []


async def test_a_feed_cursor_past_the_end_is_400_naming_the_last(tmp_path: Path) -> None:
    """GET /api/v1/changes?since=<a cursor this feed never gave> answered 200 with no
    changes and next=since, so a client holding another deployment's cursor (or one from a
    memory store before its restart) waited for ever and saw no change; now 400 naming the
    feed's last cursor, for generated cursors past it, while since=last is an empty page."""
    url = f"sqlite:///{tmp_path}/feed.db"
    async with running_server(api_key="k", store=store_from_url(url)) as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=10) as http:
        doc = Doc()
        doc.get("text", type=Text).insert(0, "one")
        update = {"update": base64.b64encode(doc.get_update()).decode()}
        assert (await http.post("/api/v1/documents/f/updates", json=update)).status_code == 200
        last = (await http.get("/api/v1/changes?since=0")).json()["next"]
        assert last >= 1
        at_end = await http.get(f"/api/v1/changes?since={last}")
        assert at_end.status_code == 200 and at_end.json() == {"changes": [], "next": last}
        rng = random.Random(7)
        for since in [last + 1, last + 2, MAX_ID,
                      *(rng.randrange(last + 1, 10 ** rng.randint(2, 18)) for _ in range(10))]:
            past = await http.get(f"/api/v1/changes?since={since}&limit=5")
            assert past.status_code == 400, (since, past.text)
            assert past.json()["error"] == (f"'since' {since} is past the end of the feed (its "
                                            f"last cursor is {last}): ask again with "
                                            f"since={last}")


async def test_an_ndjson_stream_lets_others_run_between_its_lines() -> None:
    """An 8 MB NDJSON body to /api/v1/agent/runs/…/events held the event loop for each
    64 KiB chunk it read (~700 lines published without a pause): /healthz took p50 827 ms,
    max 1.5 s while it streamed (10 ms before). Now other tasks run between every two
    lines: a task that counts its turns in the same loop gets at least one per line."""
    lines = [_ndjson("run.started")] + [_ndjson("token", message_id="m", delta="abcdefgh")
                                        for _ in range(20000)]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    async with running_server(api_key="k") as srv, \
            httpx.AsyncClient(base_url=srv.http, headers=KEY, timeout=60) as http:
        counter = asyncio.get_running_loop().create_task(count_turns())
        try:
            answer = await http.post("/api/v1/agent/runs/flood/events", content=b"".join(lines),
                                     headers={"Content-Type": "application/x-ndjson"})
        finally:
            counter.cancel()
        assert answer.status_code == 200 and answer.json()["accepted"] == len(lines)
        assert turns >= len(lines), (turns, len(lines))
