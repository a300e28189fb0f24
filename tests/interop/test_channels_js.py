"""The JS channels client (/client/channels.js, as served) in Node and in headless Chromium."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

import captify_ws
from tests.channels.support import SECRET, token, until
from tests.helpers import ProviderRepl, running_server


async def _snapshot(repl: ProviderRepl, name: str) -> dict[str, Any]:
    return await repl.call("snapshot", name=name)


async def test_node_client_through_random_drops_and_a_reload() -> None:
    """In Node: 500 publications while the connection is cut at random: every offset once, in
    order, and the state exact; a 'reloaded' client with the same storage recovers from its
    position (no reset) and continues."""
    rng = random.Random(5)
    async with running_server() as srv:
        repl = await ProviderRepl.start(script="channels_repl.mjs")
        try:
            loaded = await repl.call("load", url=f"{srv.http}/client/channels.js")
            assert {"ChannelClient", "mergePatch", "notificationsReducer"} <= \
                set(loaded["exports"])
            await repl.call("open", name="a", url=f"{srv.ws}/ws/workflow",
                            channels=["workflow:node"])

            async def live() -> bool:
                subs = (await _snapshot(repl, "a"))["subs"]
                return subs["workflow:node"]["status"] == "live"
            await until(live, "the Node client subscribed")
            for i in range(1, 501):
                await captify_ws.publish("workflow:node", "tick", i, state_patch={"i": i})
                if rng.random() < 0.03:
                    await repl.call("drop", name="a")
            async def at(name: str, offset: int) -> bool:
                subs = (await _snapshot(repl, name))["subs"]
                return subs["workflow:node"]["offset"] == offset
            await until(lambda: at("a", 500), "the Node client at offset 500")
            snap = await _snapshot(repl, "a")
            assert snap["delivered"]["workflow:node"] == [[i, i] for i in range(1, 501)]
            assert snap["subs"]["workflow:node"]["state"] == {"i": 500}
            assert snap["resets"]["workflow:node"] == [None]
            await repl.call("close", name="a")
            for i in range(501, 511):
                await captify_ws.publish("workflow:node", "tick", i, state_patch={"i": i})
            await repl.call("open", name="b", url=f"{srv.ws}/ws/workflow",
                            channels=["workflow:node"], storageOf="a")
            await until(lambda: at("b", 510), "the reloaded client at 510")
            snap = await _snapshot(repl, "b")
            assert snap["delivered"]["workflow:node"] == [[i, i] for i in range(501, 511)]
            assert snap["resets"]["workflow:node"] == []  # recovered, not reset
            assert snap["subs"]["workflow:node"]["state"] == {"i": 510}
        finally:
            await repl.close()


async def test_node_notifications_three_tabs() -> None:
    """In Node: three implicit notification tabs; mark_read in one: all show the count."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv:
        for i in range(30):
            await captify_ws.notify_user("ivy", "ping", {"n": i})
        repl = await ProviderRepl.start(script="channels_repl.mjs")
        try:
            await repl.call("load", url=f"{srv.http}/client/channels.js")
            url = f"{srv.ws}/ws/notifications?token={token('ivy')}"
            for name in ("t1", "t2", "t3"):
                await repl.call("open", name=name, url=url, implicit=True,
                                reducer="notifications")

            async def counts() -> list[int | None]:
                out = []
                for name in ("t1", "t2", "t3"):
                    subs = (await _snapshot(repl, name))["subs"]
                    state = subs.get("notifications:ivy", {}).get("state") or {}
                    out.append(state.get("unread_count"))
                return out

            async def all_at(value: int) -> bool:
                return await counts() == [value] * 3
            await until(lambda: all_at(30), "three tabs at 30")
            latest = (await _snapshot(repl, "t1"))["subs"]["notifications:ivy"]["state"]
            ids = [item["id"] for item in latest["latest"][:4]]
            reply = await repl.call("request", name="t2", type="mark_read",
                                    fields={"ids": ids})
            assert reply["data"]["unread_count"] == 26
            await until(lambda: all_at(26), "three tabs at 26")
            await captify_ws.notify_user("ivy", "ping", {"n": 30})
            await until(lambda: all_at(27), "three tabs at 27")
        finally:
            await repl.close()


PAGE = (Path(__file__).resolve().parent.parent / "js" / "channels_page.html").read_text()


async def _page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


def _chromium() -> str:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    return chromium


async def test_chromium_reload_mid_workflow_and_three_notification_tabs() -> None:
    """Real Chromium: a tab reloaded in the middle of a run shows the exact current state, then
    the later events (recovered from sessionStorage, not reset); three notification tabs show
    the right unread count after mark_read in one."""
    from playwright.async_api import async_playwright

    app = Starlette(routes=[Route("/page", _page)])
    async with running_server(http_app=app, auth="jwt", jwt_secret=SECRET) as srv, \
            async_playwright() as play:
        browser = await play.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = await browser.new_page()
            logs: list[str] = []
            page.on("console", lambda message: logs.append(message.text))
            page.on("pageerror", lambda error: logs.append(str(error)))
            await page.goto(f"{srv.http}/page?mode=workflow&token={token('pat')}")
            expected: dict[str, Any] = {}
            for i in range(1, 41):
                patch = {f"step{i % 5}": f"done-{i}", "progress": i}
                expected.update(patch)
                await captify_ws.publish("workflow:run-9", "step.status", {"i": i},
                                         state_patch=patch)
            progress = ("JSON.parse(document.getElementById('state').textContent || 'null')"
                        "?.progress")
            try:
                await page.wait_for_function(f"{progress} === 40", timeout=10000)
            except Exception:
                raise AssertionError(f"{logs} {await page.content()}") from None
            # the client writes its position and state to sessionStorage (batched): wait for it
            await page.wait_for_function(
                "Object.keys(sessionStorage).some((k) => JSON.parse(sessionStorage.getItem(k))"
                "['workflow:run-9']?.offset === 40)", timeout=10000)
            await page.reload()
            for i in range(41, 61):
                patch = {f"step{i % 5}": f"done-{i}", "progress": i}
                expected.update(patch)
                await captify_ws.publish("workflow:run-9", "step.status", {"i": i},
                                         state_patch=patch)
            await page.wait_for_function(f"{progress} === 60", timeout=10000)
            shown = json.loads(await page.locator("#state").text_content() or "null")
            assert shown == expected
            assert await page.evaluate("window.resets") == []
            offsets = await page.evaluate("window.pubs")
            assert offsets == list(range(offsets[0], 61)) and offsets[0] <= 41

            for i in range(12):
                await captify_ws.notify_user("kim", "ping", {"n": i})
            tabs = []
            for _ in range(3):
                tab = await browser.new_page()
                await tab.goto(f"{srv.http}/page?mode=notifications&token={token('kim')}")
                tabs.append(tab)
            for tab in tabs:
                await tab.wait_for_function(
                    "document.getElementById('count').textContent === '12'", timeout=10000)
            ids = await tabs[0].evaluate(
                "window.client.subscriptions.get('notifications:kim').state.latest"
                ".slice(0, 5).map((n) => n.id)")
            reply = await tabs[0].evaluate(
                f"window.client.request('mark_read', {{ ids: {json.dumps(ids)} }})")
            assert reply["unread_count"] == 7
            for tab in tabs:
                await tab.wait_for_function(
                    "document.getElementById('count').textContent === '7'", timeout=10000)
        finally:
            await browser.close()
