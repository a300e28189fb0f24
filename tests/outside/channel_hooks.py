"""A product's own authorizer for channels, named by --authorizer
tests.outside.channel_hooks:authorize: it sees every subscribe, recoveries included."""

from __future__ import annotations

from captify_ws import Principal, Reject, UpgradeRequest

CALLS: list[tuple[str | None, str]] = []


async def authorize(principal: Principal, resource: str, request: UpgradeRequest) -> str:
    CALLS.append((principal.user_id, resource))
    if resource.startswith("workflow:ok-"):
        return "read"
    raise Reject(4403, f"no access to {resource}")
