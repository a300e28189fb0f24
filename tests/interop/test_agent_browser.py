"""An agent run in real Chromium tabs: a tab reloaded mid-run shows the text so far and goes
on; a cancel from a second tab stops the producer within 1 s; both tabs end at cancelled."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

import captify_ws
from captify_ws.api import agent_runs
from tests.helpers import running_server
from tests.interop.test_channels_js import _chromium
from tests.polling import eventually

PAGE = (Path(__file__).resolve().parent.parent / "js" / "agent_page.html").read_text()
TEXT = "document.getElementById('text').textContent"
STATUS = "document.getElementById('status').textContent"


async def _page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def test_reload_mid_run_and_cancel_from_a_second_tab() -> None:
    """Tab 1 reloads mid-run, away long enough to be too far behind for a recovery (it gets
    the compacted snapshot): it shows the text so far, then the rest; tab 2's cancel reaches
    the producer's task within 1 s; both tabs show exactly the run's text and 'cancelled'."""
    from playwright.async_api import async_playwright

    app = Starlette(routes=[Route("/page", _page)])
    async with running_server(http_app=app, agent_coalesce_tokens=2,
                              agent_recovery_max_publications=1) as srv, \
            async_playwright() as play:
        browser = await play.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        produced: list[str] = []
        stopped: list[float] = []

        async def produce() -> None:
            async with captify_ws.agent_run("browser-run") as run:
                await run.message_started("m1")
                try:
                    for i in range(1_000_000):
                        piece = f"t{i} "
                        await run.token("m1", piece)
                        produced.append(piece)
                        await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    stopped.append(time.monotonic())
                    raise

        producer = asyncio.get_running_loop().create_task(produce())
        try:
            one = await browser.new_page()
            await one.goto(f"{srv.http}/page?run=browser-run")
            await one.wait_for_function(f"{TEXT}.length > 200", timeout=10000)
            # The tab leaves (its position is saved at pagehide, in the tab's sessionStorage)
            # and comes back only once the run has published more than one recovery replays
            # (agent_recovery_max_publications=1) beyond any position it can have saved.
            hub = srv.server.channel_services.hub
            await one.goto("about:blank")
            left = (await hub.snapshot("agent:browser-run")).position.offset

            async def past_the_cap() -> bool:
                return (await hub.snapshot("agent:browser-run")).position.offset > left + 1

            await eventually(past_the_cap, "two publications after the tab left")
            await one.goto(f"{srv.http}/page?run=browser-run")
            await one.wait_for_function(f"{TEXT}.length > 0", timeout=10000)
            first = await one.evaluate(TEXT)
            assert await one.evaluate("window.resets") == ["too_far"], "one snapshot"
            assert "".join(produced).startswith(first), "the text so far, after the reload"
            await one.wait_for_function(f"{TEXT}.length > {len(first) + 100}", timeout=10000)
            two = await browser.new_page()
            await two.goto(f"{srv.http}/page?run=browser-run")
            await two.wait_for_function(f"{STATUS} === 'running'", timeout=10000)
            asked = time.monotonic()
            reply = await two.evaluate("window.cancelRun()")
            assert reply == {"status": "cancelled"}
            await asyncio.wait_for(producer, 5)
            assert stopped and stopped[0] - asked < 1.0, "the producer stopped within 1 s"
            snapshot = json.loads((await srv.server.channel_services.hub.snapshot(
                "agent:browser-run")).state_json)
            final = snapshot["messages"][0]["text"]
            assert snapshot["status"] == "cancelled" and final.startswith("t0 t1 ")
            for tab in (one, two):
                await tab.wait_for_function(f"{STATUS} === 'cancelled'", timeout=10000)
                assert await tab.evaluate(TEXT) == final
            assert await agent_runs(srv.server).status("browser-run") == "cancelled"
        finally:
            producer.cancel()
            await browser.close()
