"""/ws/notifications end to end: a mailbox, not a cache — on the embedded store and on
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

import captify_ws
from captify_ws.client import ChannelClient, notifications_reducer
from tests.channels.support import SECRET, raw, server_on, subscribe, token, until
from tests.helpers import RunningServer, running_server
from tests.services import fresh_database

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def srv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with the notifications tables in SQLite, or in PostgreSQL."""
    if request.param == "sqlite":
        async with server_on(f"sqlite:///{tmp_path}/n.db", api_key="k", auth="jwt",
                             jwt_secret=SECRET) as running:
            yield running
        return
    with fresh_database() as url:
        async with server_on(url, api_key="k", auth="jwt", jwt_secret=SECRET) as running:
            yield running


def _tab(srv: RunningServer, user: str) -> ChannelClient:
    return ChannelClient(f"{srv.ws}/ws/notifications?token={token(user)}", implicit=True,
                         reduce=notifications_reducer)


async def test_offline_user_gets_all_200_then_three_tabs_converge(srv: RunningServer) -> None:
    """200 notifications while offline: the tab that comes back recovers every one (replayed
    with offsets); a new tab gets the count and the newest 20, and pages over HTTP hold all
    200. mark_read in one of three tabs: every tab has the right unread count."""
    first = _tab(srv, "ann")
    await first.start()
    await until(lambda: "notifications:ann" in first.subscriptions
                and first.subscriptions["notifications:ann"].status == "live", "ann subscribed")
    await first.stop()
    for i in range(200):
        await captify_ws.notify_user("ann", "comment", {"n": i}, dedupe_key=f"c{i}")
    assert not await captify_ws.is_online("ann")
    await first.start()  # the same tab, back with its position
    sub = first.subscriptions["notifications:ann"]
    await until(lambda: sub.offset == 200, "the returning tab has all 200")
    assert sub.resets == [None]  # recovered, not reset
    assert sub.state["unread_count"] == 200 and len(sub.state["latest"]) == 200
    assert sorted(n["payload"]["n"] for n in sub.state["latest"]) == list(range(200))
    second, third = _tab(srv, "ann"), _tab(srv, "ann")
    await second.start()
    await third.start()
    try:
        for tab in (second, third):
            await until(lambda tab=tab: "notifications:ann" in tab.subscriptions and
                        tab.subscriptions["notifications:ann"].status == "live", "new tab")
            state = tab.subscriptions["notifications:ann"].state
            assert state["unread_count"] == 200 and len(state["latest"]) == 20
        assert await captify_ws.is_online("ann")
        ids = [n["id"] for n in sub.state["latest"][:5]]
        reply = await second.request("mark_read", ids=ids)
        assert reply["unread_count"] == 195 and sorted(reply["ids"]) == sorted(ids)
        for tab in (first, second, third):
            tab_sub = tab.subscriptions["notifications:ann"]
            await until(lambda s=tab_sub: s.state["unread_count"] == 195, "every tab at 195")
        reply = await third.request("mark_all_read", up_to=max(ids))
        for tab in (first, second, third):
            tab_sub = tab.subscriptions["notifications:ann"]
            await until(lambda s=tab_sub: s.state["unread_count"] == 0, "every tab at 0")
        async with httpx.AsyncClient(timeout=10) as http:
            seen: list[int] = []
            before = None
            while True:
                params = {"user_id": "ann", "limit": 64, **({"before": before} if before else {})}
                page = (await http.get(f"{srv.http}/api/v1/notifications", params=params,
                                       headers=AUTH)).json()
                if not page["notifications"]:
                    break
                seen += [n["payload"]["n"] for n in page["notifications"]]
                before = page["notifications"][-1]["id"]
            assert sorted(seen) == list(range(200)) and page["unread_count"] == 0
    finally:
        for tab in (first, second, third):
            await tab.stop()

    async def offline() -> bool:
        return not await captify_ws.is_online("ann")
    await until(offline, "ann offline")


async def test_dedupe_key_and_http_notify(srv: RunningServer) -> None:
    """A repeated dedupe key stores nothing new and is not delivered twice; HTTP works."""
    async with raw(f"{srv.ws}/ws/notifications?token={token('bo')}") as tab, \
            httpx.AsyncClient(timeout=10) as http:
        answer = await tab.expect("subscribed")
        assert answer["channel"] == "notifications:bo" and answer["state"]["unread_count"] == 0
        body = {"user_id": "bo", "kind": "mention", "payload": {"by": "ann"},
                "dedupe_key": "m1"}
        made = (await http.post(f"{srv.http}/api/v1/notifications", json=body,
                                headers=AUTH)).json()
        again = (await http.post(f"{srv.http}/api/v1/notifications", json=body,
                                 headers=AUTH)).json()
        assert made == again and made["kind"] == "mention" and made["read"] is False
        got = [m for m in await tab.quiet(0.3) if m["type"] == "pub"]
        assert [(m["event"], m["data"]["id"], m["data"]["unread_count"]) for m in got] == \
            [("notification.created", made["id"], 1)]
        huge = await http.post(f"{srv.http}/api/v1/notifications", headers=AUTH,
                               json={"user_id": "bo", "kind": "x", "payload": "x" * 20000})
        assert huge.status_code == 413
        online = (await http.get(f"{srv.http}/api/v1/users/bo/online", headers=AUTH)).json()
        assert online == {"online": True, "connections": 1}


async def test_a_user_never_reads_another_users_mailbox() -> None:
    """Anonymous: 4401. Naming another user's channel: 4403. Bad ids: 4400."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv:
        async with connect(f"{srv.ws}/ws/notifications") as ws:
            await ws.wait_closed()
            assert ws.close_code == 4401
        async with raw(f"{srv.ws}/ws/notifications?token={token('eve')}") as tab:
            await tab.expect("subscribed")
            await tab.send({"type": "subscribe", "id": 1, "channel": "notifications:ann"})
            assert (await tab.expect("error"))["code"] == 4403
            await tab.send({"type": "unsubscribe", "channel": "notifications:eve"})
            await tab.expect("unsubscribed")
            again = await subscribe(tab, "notifications:eve", 2)
            assert again["state"]["unread_count"] == 0
            await tab.send({"type": "mark_read", "id": 3, "ids": "all"})
            assert (await tab.expect("error"))["code"] == 4400
        malformed = f"{srv.ws}/ws/notifications?token={token('eve')}&offset=x"
        async with raw(malformed) as tab:
            error = await tab.expect("error")
            assert error["code"] == 4400 and "malformed since" in error["message"]
