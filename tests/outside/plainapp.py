"""The smallest ASGI app, as a newcomer would write it next to captify-ws (README "Next to
your HTTP app"): imported by name from the folder `captify-ws serve` runs in."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from plainapp"})
