"""The product app's lifespan, run by captify-ws: errors are logged, never silent."""

from __future__ import annotations

import logging

import pytest

from captify_ws.app import AppLifespan
from captify_ws.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.unit


async def crashing_app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("the product's database is down")


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise ValueError("only http")  # the smallest apps refuse other scopes like this


@pytest.mark.parametrize(("app", "text"), [(crashing_app, "the product's database is down"),
                                           (plain_app, "only http")])
async def test_a_raising_lifespan_is_logged_with_an_error_id(
        app: object, text: str, caplog: pytest.LogCaptureFixture) -> None:
    """The app is served without lifespan events, and what it raised is in the log under an
    error id (a crash used to look like "lifespan unsupported")."""
    lifespan = AppLifespan(app, {"type": "lifespan"})  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="captify_ws.app"):
        await lifespan.startup()
        await lifespan.shutdown()
    logged = [r for r in caplog.records if text in r.getMessage()]
    assert len(logged) == 1 and getattr(logged[0], "error_id", None)


async def test_a_lifespan_app_starts_and_stops() -> None:
    """An app that speaks lifespan gets startup and shutdown, in order."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            seen.append(message["type"])
            kind = "complete"
            await send({"type": f"{message['type']}.{kind}"})
            if message["type"] == "lifespan.shutdown":
                return

    lifespan = AppLifespan(app, {"type": "lifespan"})
    await lifespan.startup()
    await lifespan.shutdown()
    assert seen == ["lifespan.startup", "lifespan.shutdown"]
