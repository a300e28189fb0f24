"""Helpers of the channel tests: tokens, raw protocol clients, deadline-bound waits."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
from websockets.asyncio.client import connect

from captify_ws.app import create_app
from captify_ws.server import Server
from captify_ws.transport.native_server import NativeServer
from tests.helpers import JsonClient, RunningServer, test_settings
from tests.polling import eventually

SECRET = "channel-test-secret-that-is-long-enough"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET,
                      algorithm="HS256")


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[JsonClient]:
    """A raw channel-protocol client (send dicts, expect message types)."""
    async with connect(url, max_queue=None) as ws:
        yield JsonClient(ws, "")


async def subscribe(client: JsonClient, channel: str, ident: int = 1,
                    since: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "subscribe", "id": ident, "channel": channel}
    if since is not None:
        message["since"] = since
    await client.send(message)
    return await client.expect("subscribed", where=lambda m: m.get("id") == ident)


async def until(predicate: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = 15.0) -> None:
    """:func:`tests.polling.eventually` with the channel tests' deadline."""
    await eventually(predicate, what, timeout)


def pubs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "pub"]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@contextlib.asynccontextmanager
async def server_on(store_url: str, **overrides: Any) -> AsyncIterator[RunningServer]:
    """A native server in this process whose Settings.store is ``store_url`` (the document
    store and the channel tables beside it)."""
    server = Server(test_settings(store=store_url, **overrides))
    app = create_app(server=server)
    await server.start()
    native = NativeServer(server, app)
    await native.start()
    try:
        yield RunningServer(server, native.port)
    finally:
        await native.stop()
        await server.stop()
