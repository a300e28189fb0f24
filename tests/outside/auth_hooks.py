"""A product's own authentication hook, named by --auth tests.outside.auth_hooks:authenticate."""

from __future__ import annotations

import asyncio

from captify_ws import Principal, Reject, UpgradeRequest


async def authenticate(request: UpgradeRequest) -> Principal:
    if request.query.get("ticket") == "open-sesame":
        return Principal("ticket-holder", {"via": "ticket"})
    raise Reject(4401, "bad ticket")


async def slow_authenticate(request: UpgradeRequest) -> Principal:
    """Never answers in time (the server's auth_timeout_s turns this into 4408)."""
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def broken_authorize(principal: Principal, document_id: str,
                           request: UpgradeRequest) -> str:
    """Fails the way a broken backend does, with internals in its message (never shown to
    clients)."""
    raise RuntimeError("connection to postgresql://admin:hunter2@db.internal:5432/prod failed: "
                       "relation \"captify_documents\" does not exist (/srv/app/store.py:42)")


async def delayed_authenticate(request: UpgradeRequest) -> Principal:
    """Lets everyone in, after 50 ms (as a session endpoint would take)."""
    await asyncio.sleep(0.05)
    return Principal(None, {})


async def authenticate_user(request: UpgradeRequest) -> Principal:
    """Whoever ``?user=`` names (tests of what comes after authentication)."""
    return Principal(request.query.get("user") or None, {"via": "query"})
