"""A product's hooks for the Hocuspocus tests: an authenticator with a slow token, an
authorizer by document prefix, and a stateless hook (named by import path in the tests)."""

from __future__ import annotations

import asyncio

from captify_ws import Principal, Reject, StatelessEvent, UpgradeRequest

#: every stateless event the hook saw, for the test to read (in-process servers only)
seen: list[tuple[str, str, str | None]] = []


async def authenticate(request: UpgradeRequest) -> Principal:
    """``Bearer <user>`` (or ``?token=<user>``) is that user; ``slow`` answers after 3 s;
    nothing → 4401."""
    scheme, _, token = (request.header("authorization") or "").partition(" ")
    if scheme != "Bearer":
        token = request.query.get("token", "")
    if not token:
        raise Reject(4401, "Unauthorized: no token")
    if token == "slow":
        await asyncio.sleep(3)
    if token.startswith("bad"):
        raise Reject(4401, f"Unauthorized: {token} is not a user")
    return Principal(token)


def authorize(principal: Principal, document_id: str, request: UpgradeRequest) -> str:
    """``ro-*`` documents are read-only, ``no-*`` refused, the rest writable."""
    if document_id.startswith("no-"):
        raise Reject(4403, "no entry for you")
    return "read" if document_id.startswith("ro-") else "write"


async def on_stateless(event: StatelessEvent) -> None:
    """Records the event; answers "ping" with "pong:<document>:<user>"."""
    seen.append((event.document_id, event.payload, event.user_id))
    if event.payload == "ping":
        event.reply(f"pong:{event.document_id}:{event.user_id}")
