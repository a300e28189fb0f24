"""Revocations are stored (issue 13.8): revoke, restart the real process (SIGTERM or kill -9),
and the same valid JWT is still refused (or still read-only) for revocation_ttl_s; a new
instance on a shared PostgreSQL store refuses it too."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import ServerProcess
from tests.polling import eventually
from tests.services import REDIS_URL, fresh_database, require_redis

SECRET = "revocation-test-secret-0123456789abcdef"


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def serve(store: str, *extra: str) -> ServerProcess:
    return ServerProcess(["--port", "0", "--store", store, "--auth", "jwt", "--jwt-secret",
                          SECRET, "--api-key", "k", "--log-level", "warning", *extra]).start()


async def revoke(proc: ServerProcess, user: str, to: str) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proc.http}/api/v1/documents/board/revoke",
                                 headers={"Authorization": "Bearer k"},
                                 json={"userId": user, "to": to})
        assert answer.status_code == 200, answer.text


async def close_code(proc: ServerProcess, user: str) -> int | None:
    """Join 'board' as ``user`` over JSON; ``None`` if admitted, else the close code."""
    url = f"{proc.ws}/ws/fabric?documentId=board&clientID={user}&token={token(user)}"
    async with connect(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            message = await asyncio.wait_for(ws.recv(), 10)
            assert '"connected"' in str(message)
            return None
        return ws.close_code


async def may_edit(proc: ServerProcess, user: str) -> bool:
    """Join 'board' and send an update: ``False`` when it is refused as read-only."""
    url = f"{proc.ws}/ws/fabric?documentId=board&clientID={user}&token={token(user)}"
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, user)
    async with connect(url) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # connected
        await ws.send(json.dumps({"type": "update", "documentId": "board",
                                  "data": base64.b64encode(doc.get_update()).decode()}))
        await ws.send('{"type":"sync","documentId":"board"}')
        while True:
            reply = str(await asyncio.wait_for(ws.recv(), 10))
            if '"error"' in reply and "read_only" in reply:
                return False
            if '"synced"' in reply:
                return True


async def test_revocations_hold_across_restarts_of_the_process(tmp_path: Path) -> None:
    """SQLite: dave revoked ("none"), frank made read-only; after a SIGTERM restart and after
    kill -9 the same JWTs are refused (4403) and read-only; erin is untouched."""
    store = f"sqlite:///{tmp_path}/revoked.db"
    proc = serve(store)
    try:
        assert await close_code(proc, "dave") is None
        await revoke(proc, "dave", "none")
        await revoke(proc, "frank", "read")
        assert await close_code(proc, "dave") == 4403
    finally:
        proc.stop()
    for stop in ("sigterm", "kill9"):
        proc = serve(store)
        try:
            assert await close_code(proc, "dave") == 4403, stop
            assert not await may_edit(proc, "frank"), stop
            assert await may_edit(proc, "erin"), stop
        finally:
            proc.kill9() if stop == "kill9" else proc.stop()


async def test_revocations_expire_after_their_ttl(tmp_path: Path) -> None:
    """A stored revocation ends after revocation_ttl_s, restart or not."""
    store = f"sqlite:///{tmp_path}/ttl.db"
    proc = serve(store, "--revocation-ttl-s", "1")
    try:
        await revoke(proc, "dave", "none")
    finally:
        proc.stop()
    proc = serve(store, "--revocation-ttl-s", "1")
    try:
        async def expired() -> bool:
            return await close_code(proc, "dave") != 4403

        await eventually(expired, "the revocation to expire", interval=0.2)
    finally:
        proc.stop()


async def test_a_new_instance_on_a_shared_store_refuses_the_revoked() -> None:
    """PostgreSQL and Redis: revoked on instance one; instance two (already running) and
    instance three (started afterwards) refuse the same JWT."""
    require_redis()
    with fresh_database() as url:
        cluster = ["--broker", REDIS_URL, "--broker-prefix", f"rev-{time.time_ns()}",
                   "--cluster-heartbeat-s", "0.5"]
        one, two = serve(url, *cluster), serve(url, *cluster)
        three: ServerProcess | None = None
        try:
            await revoke(one, "dave", "none")
            async def two_refuses() -> bool:
                return await close_code(two, "dave") == 4403

            await eventually(two_refuses, "instance two to hear of it", interval=0.1)
            three = serve(url, *cluster)
            assert await close_code(three, "dave") == 4403
            assert await close_code(three, "erin") is None
        finally:
            for proc in (one, two, three):
                if proc is not None:
                    proc.stop()


async def test_redis_keeps_revocations_for_instances_with_stores_of_their_own(
        tmp_path: Path) -> None:
    """Redis broker, each instance on its own SQLite file: an instance started after the
    revocation (with an empty store) refuses the revoked JWT."""
    require_redis()
    cluster = ["--broker", REDIS_URL, "--broker-prefix", f"rev-{time.time_ns()}",
               "--cluster-heartbeat-s", "0.5", "--revocation-ttl-s", "30"]
    one = serve(f"sqlite:///{tmp_path}/one.db", *cluster)
    later: ServerProcess | None = None
    try:
        await revoke(one, "dave", "none")
        later = serve(f"sqlite:///{tmp_path}/later.db", *cluster)
        assert await close_code(later, "dave") == 4403
        assert await close_code(later, "erin") is None
    finally:
        for proc in (one, later):
            if proc is not None:
                proc.stop()
