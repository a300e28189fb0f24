"""POST …/steps is idempotent on its changeId, and its ``version`` means one thing: the
version the change's steps apply to (applied at, or — 409 — to rebuild on)."""

from __future__ import annotations

import random
from typing import Any

import httpx

from captify_ws.store.postgres import PostgresStore
from tests.helpers import RunningServer, running_server
from tests.services import fresh_database

AUTH = {"Authorization": "Bearer k"}


def insert_step(text: str) -> dict[str, Any]:
    return {"stepType": "replace", "from": 1, "to": 1,
            "slice": {"content": [{"type": "text", "text": text}]}}


async def post(http: httpx.AsyncClient, srv: RunningServer, document_id: str,
               body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{srv.http}/api/v1/documents/{document_id}/steps", headers=AUTH,
                           json=body)


async def test_a_retried_request_is_a_duplicate_with_the_version_it_was_applied_at(
        transport: str) -> None:
    """The issue's input: version 0, changeId c1, sent twice → the second answer is
    duplicate:true, version 0 (not 409); whatever version a retry names."""
    async with running_server(transport, api_key="k") as srv, \
            httpx.AsyncClient(timeout=10) as http:
        body = {"steps": [insert_step("one ")], "version": 0, "changeId": "c1"}
        first = await post(http, srv, "retry", body)
        assert first.status_code == 200, first.text
        assert first.json() == {"documentId": "retry", "version": 0, "applied": True,
                                "duplicate": False, "yjs": False}
        again = await post(http, srv, "retry", body)
        assert again.status_code == 200, again.text
        assert again.json() == {"documentId": "retry", "version": 0, "applied": False,
                                "duplicate": True, "yjs": False}
        for version in (None, 0, 1, 7):
            retry = await post(http, srv, "retry", {**body, "version": version})
            assert (retry.status_code, retry.json()["duplicate"], retry.json()["version"]) \
                == (200, True, 0)
        behind = await post(http, srv, "retry", {"steps": [insert_step("two ")],
                                                 "version": 0, "changeId": "c2"})
        assert behind.status_code == 409
        assert behind.json()["version"] == 1  # the version to rebuild on
        assert behind.json()["code"] == "version_behind"
        applied = await post(http, srv, "retry", {"steps": [insert_step("two ")],
                                                  "version": 1, "changeId": "c2"})
        assert applied.json()["version"] == 1


async def test_generated_requests_over_two_instances_are_answered_consistently() -> None:
    """Generated: new changes and retries (with any version) sent at random to two instances
    sharing a PostgreSQL store; every change is applied once, retries answer duplicate with
    the version it was applied at, 409 answers give the current version, and the stored log
    holds exactly the applied changes in order."""
    rand = random.Random(12_9)
    with fresh_database() as db:
        async with running_server(api_key="k", store=PostgresStore(db)) as a, \
                running_server("asgi", api_key="k", store=PostgresStore(db)) as b, \
                httpx.AsyncClient(timeout=10) as http:
            applied: dict[str, int] = {}
            current = 0
            for index in range(60):
                srv = rand.choice([a, b])
                if applied and rand.random() < 0.4:
                    change = rand.choice(list(applied))
                else:
                    change = f"c{index}"
                version = rand.choice([None, current, max(0, current - rand.randint(1, 3)),
                                       current + 1])
                body: dict[str, Any] = {"steps": [insert_step(f"<{change}>")],
                                        "changeId": change}
                if version is not None:
                    body["version"] = version
                answer = await post(http, srv, "gen", body)
                data = answer.json()
                if change in applied:
                    assert (answer.status_code, data["duplicate"], data["version"]) == \
                        (200, True, applied[change]), (body, data)
                elif version is None or version == current:
                    assert (answer.status_code, data["applied"], data["version"]) == \
                        (200, True, current), (body, data)
                    applied[change] = current
                    current += 1
                elif version < current:
                    assert (answer.status_code, data["version"]) == (409, current), (body, data)
                else:
                    assert answer.status_code == 400 and data["code"] == "invalid_version"
            final = await post(http, srv, "gen", {"steps": [insert_step("<end>")],
                                                  "changeId": "end"})
            assert final.json()["version"] == current
        import asyncpg

        conn = await asyncpg.connect(db)
        try:
            rows = await conn.fetch("SELECT change_id, version FROM captify_changes "
                                    "WHERE document_id = 'gen'")
        finally:
            await conn.close()
        assert {row["change_id"].strip('"'): row["version"] for row in rows} == \
            {**applied, "end": current}
