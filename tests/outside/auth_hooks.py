"""A product's own authentication hook, named by --auth tests.outside.auth_hooks:authenticate."""

from __future__ import annotations

from captify_ws import Principal, Reject, UpgradeRequest


async def authenticate(request: UpgradeRequest) -> Principal:
    if request.query.get("ticket") == "open-sesame":
        return Principal("ticket-holder", {"via": "ticket"})
    raise Reject(4401, "bad ticket")
