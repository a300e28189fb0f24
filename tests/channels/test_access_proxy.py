"""Channels through the access-proxy authorizer: the product's own access endpoint is asked
for every subscribe and every recovery, with the channel as the resource and the user, and
its answer decides."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import captify_ws
from tests.channels.support import SECRET, raw, subscribe, token
from tests.helpers import running_server
from tests.test_auth import product_app


async def test_every_subscribe_and_recovery_asks_the_product() -> None:
    """carol may read workflow:mine, not workflow:theirs (4403 for that request only, the
    socket carries on); when the product withdraws workflow:mine, her recovery with since is
    refused too. Each decision was the product's, asked with the channel and her user id."""
    levels = {"workflow:mine": "read"}
    asked: list[tuple[str, str]] = []

    async def access(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        asked.append((body["documentId"], body["userId"]))
        return JSONResponse({"access": levels.get(body["documentId"], "none")})

    async with product_app([Route("/access", access, methods=["POST"])]) as product, \
            running_server(auth="jwt", jwt_secret=SECRET, authorizer="access-proxy",
                           auth_access_url=f"{product}/access", auth_cache_s=0) as srv:
        await captify_ws.publish("workflow:mine", "step", 1, state_patch={"n": 1})
        async with raw(f"{srv.ws}/ws/workflow?token={token('carol')}") as tab:
            mine = await subscribe(tab, "workflow:mine", 1)
            assert (mine["recovered"], mine["state"], mine["offset"]) == (False, {"n": 1}, 1)
            await tab.send({"type": "subscribe", "id": 2, "channel": "workflow:theirs"})
            refused = await tab.expect("error", where=lambda m: m.get("id") == 2)
            assert (refused["code"], refused["channel"]) == (4403, "workflow:theirs")
            await captify_ws.publish("workflow:mine", "step", 2, state_patch={"n": 2})
            assert (await tab.expect("pub"))["offset"] == 2  # the refusal disturbed nothing

            await tab.send({"type": "unsubscribe", "id": 3, "channel": "workflow:mine"})
            await tab.expect("unsubscribed")
            await captify_ws.publish("workflow:mine", "step", 3)
            levels["workflow:mine"] = "none"
            await tab.send({"type": "subscribe", "id": 4, "channel": "workflow:mine",
                            "since": {"offset": 2, "epoch": mine["epoch"]}})
            again = await tab.expect("error", where=lambda m: m.get("id") == 4)
            assert again["code"] == 4403
            assert await tab.quiet(0.3) == []  # no replay of offset 3
        assert asked == [("workflow:mine", "carol"), ("workflow:theirs", "carol"),
                         ("workflow:mine", "carol")]
