"""Running it in production: metrics, the dashboard in real Chromium, logs, graceful
shutdown, and the deployment files (nginx, PM2, systemd) exercised for real."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import NODE_BIN, ROOT, ServerProcess, providers, running_server
from tests.polling import eventually, eventually_sync
from tests.services import free_port

ARTIFACTS = ROOT / "test-artifacts"


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?") + \
        r" ([0-9.e+-]+)"
    match = re.search(r"^" + pattern + r"$", text, re.M)
    assert match, f"{name}{{{labels}}} not in metrics"
    return float(match.group(1))


async def test_metrics_follow_the_traffic() -> None:
    """/metrics (Prometheus text format): connections, rooms, messages in by type, frames
    out, fan-out histogram, store, refusals."""
    async with running_server(max_connections_per_user=1,
                              auth="tests.outside.auth_hooks:authenticate") as srv, \
            httpx.AsyncClient(timeout=10) as http:
        async with connect(srv.fabric("m1") + "&ticket=open-sesame") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "sync", "documentId": "m1"}))
            await ws.recv()
            async with connect(srv.fabric("m1") + "&ticket=nope") as refused:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(refused.recv(), 5)
                assert refused.close_code == 4401
            async def refusal_counted() -> str | None:
                text = (await http.get(f"{srv.http}/metrics")).text
                refusals = _metric(text, "captify_auth_refusals_total", 'reason="4401"')
                one_open = _metric(text, "captify_connections", 'handler="fabric"') == 1
                return text if refusals == 1 and one_open else None

            text = await eventually(refusal_counted, "the refused connection in /metrics")
            assert _metric(text, "captify_connections", 'handler="fabric"') == 1
            assert _metric(text, "captify_rooms_loaded") == 1
            assert _metric(text, "captify_messages_received_total", 'type="sync"') == 1
            assert _metric(text, "captify_frames_sent_total") >= 2
            assert _metric(text, "captify_auth_refusals_total", 'reason="4401"') == 1
            assert _metric(text, "captify_store_pending_writes") == 0
            assert "captify_broadcast_fanout_seconds_bucket" in text
            assert "process_resident_memory_bytes" in text
        async def no_connection() -> bool:
            text = (await http.get(f"{srv.http}/metrics")).text
            return _metric(text, "captify_connections", 'handler="fabric"') == 0

        await eventually(no_connection, "the closed connection to leave /metrics")


async def test_metrics_require_the_token_when_one_is_set(transport: str) -> None:
    """CAPTIFY_WS_METRICS_TOKEN: /metrics answers 401 without it, with a wrong one or another
    scheme, and the exposition with 'Authorization: Bearer <token>'; /healthz stays open."""
    async with running_server(transport, metrics_token="scrape-me") as srv, \
            httpx.AsyncClient(base_url=srv.http) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Basic scrape-me"}, {"Authorization": "scrape-me"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "captify_" not in refused.text
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert allowed.status_code == 200 and "captify_rooms_loaded" in allowed.text
        assert (await http.get("/healthz")).status_code == 200


async def test_dashboard_in_chromium_follows_connections() -> None:
    """/admin in real headless Chromium: the numbers follow clients as they come and go."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_server(api_key="dash-key") as srv, async_playwright() as play:
        browser = await play.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = await browser.new_page()
            login = await page.goto(f"{srv.http}/admin")
            assert login is not None and login.status == 401  # the login form
            await page.fill("#key", "dash-key")
            await page.click("button[type=submit]")
            total = page.locator("#connections-total")
            await page.wait_for_function(
                "document.getElementById('connections-total').textContent === '0'")
            clients = [await connect(srv.fabric("dash-doc", f"c{i}")) for i in range(3)]
            await page.wait_for_function(
                "document.getElementById('connections-total').textContent === '3'",
                timeout=10000)
            row = page.locator('#documents tr[data-document="dash-doc"] td').nth(1)
            assert await row.text_content() == "3"
            assert await page.locator("#rooms-loaded").text_content() == "1"
            for ws in clients[:2]:
                await ws.send(json.dumps({"type": "sync", "documentId": "dash-doc"}))
            await page.reload()  # the session cookie set at login keeps us in
            await page.wait_for_function(
                "document.getElementById('connections-total').textContent === '3'")
            await page.wait_for_timeout(2500)  # a few refreshes: the charts have points
            await page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
            for ws in clients:
                await ws.close()
            await page.wait_for_function(
                "document.getElementById('connections-total').textContent === '0'",
                timeout=10000)
            assert await total.text_content() == "0"
        finally:
            await browser.close()
    assert (ARTIFACTS / "admin-dashboard.png").stat().st_size > 10_000


def test_json_logs_name_connections_but_never_contents_or_tokens() -> None:
    """--log-format json: one object per line with connection, document and close code; no
    document text and no token anywhere."""
    secret = "s3cret-for-logs-that-is-long-enough-!!"
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    proc = ServerProcess(["--port", "0", "--store", "memory", "--log-format", "json",
                          "--auth", "jwt", "--jwt-secret", secret]).start()
    try:
        async def session() -> None:
            from tests.helpers import JsonClient

            async with connect(f"{proc.ws}/ws/fabric?documentId=logged&token={token}") as ws:
                client = JsonClient(ws, "logged")
                await client.expect("connected")
                await client.edit("TOP-SECRET-CONTENT")
                await client.sync()
        asyncio.run(session())

        def close_logged() -> bool:
            return any('"close_code"' in line and '"logged"' in line for line in proc.output)

        eventually_sync(close_logged, "the connection's close in the log", timeout=5)
    finally:
        proc.stop()
    records = [json.loads(line) for line in proc.output if line.startswith("{")]
    assert records, proc.log
    left = [r for r in records if r.get("document") == "logged" and "close_code" in r]
    assert left and left[0]["connection"] and left[0]["close_code"] == 1000
    assert "TOP-SECRET-CONTENT" not in proc.log
    assert token not in proc.log and secret not in proc.log


async def test_sigterm_mid_editing_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM while providers type: clients get 1012, the process exits 0 within the bound,
    and after a restart every token typed is there."""
    port = free_port()
    store = f"sqlite:///{tmp_path}/graceful.db"
    args = ["--port", str(port), "--store", store, "--shutdown-timeout-s", "10"]
    server = ServerProcess(args).start()
    names = ["g0", "g1", "g2"]
    async with providers() as repl:
        for name in names:
            await repl.call("open", name=name, url=f"ws://127.0.0.1:{port}/ws/fabric",
                            doc="graceful")
        for name in names:
            await repl.call("waitSynced", name=name)
        typing = asyncio.gather(*(repl.call("insertTokens", name=n, count=100, seed=i + 1,
                                            delayMs=5, wait=60) for i, n in enumerate(names)))
        async def under_way() -> bool:  # some of the 300 tokens typed, most not yet
            return (await repl.call("snapshot", name="g0"))["text"].count(";") >= 30

        await eventually(under_way, "the typing to be under way", interval=0.01)
        started = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, 15)
        assert code == 0 and time.monotonic() - started < 10
        server.stop()
        assert "stopped" in server.log
        statuses = [await repl.call("status", name=n) for n in names]
        assert all(1012 in s["closes"] for s in statuses), statuses
        await typing
        server = ServerProcess(args).start()
        try:
            expected = {f"{n}:{i};" for n in names for i in range(100)}

            async def converged() -> bool:
                texts = [(await repl.call("snapshot", name=n))["text"] for n in names]
                return all(t == texts[0] for t in texts) and all(x in texts[0] for x in expected)

            await eventually(converged, "the providers to converge after the restart",
                             timeout=30, interval=0.1)
        finally:
            assert server.stop() == 0
    from pycrdt import Doc, Text

    from captify_ws.store.sqlite import SqliteStore

    stored = SqliteStore(store)
    await stored.open()
    loaded = await stored.load("graceful")
    await stored.close()
    assert loaded is not None
    doc: Doc[Any] = Doc()
    doc.apply_update(loaded.as_update())
    assert all(token in str(doc.get("text", type=Text)) for token in expected)


async def test_nginx_in_front_with_idle_periods(tmp_path: Path) -> None:
    """deploy/nginx.conf in front of the server: y-websocket providers sync and converge
    through it, and stay connected over idle periods longer than nginx's read timeout (set
    short here), because the server pings them."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed (.ci/run installs it: apt-get install nginx-light)")
    upstream, front = free_port(), free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("server 127.0.0.1:3000;", f"server 127.0.0.1:{upstream};")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{front};")
    conf = conf.replace("proxy_read_timeout 86400;", "proxy_read_timeout 4s;")
    conf = conf.replace("proxy_send_timeout 86400;", "proxy_send_timeout 4s;")
    main = (f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            f"events {{ worker_connections 1024; }}\nhttp {{\n"
            f"  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
            f"  proxy_temp_path {tmp_path}/proxy;\n{conf}\n}}\n")
    (tmp_path / "nginx.conf").write_text(main)
    server = ServerProcess(["--port", str(upstream), "--store", "memory",
                            "--ping-interval-s", "1.5"]).start()
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                              "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{front}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.1)
        async with providers() as repl:
            for name in ("n1", "n2"):
                await repl.call("open", name=name, url=f"ws://127.0.0.1:{front}/ws/fabric",
                                doc="proxied")
                await repl.call("waitSynced", name=name)
            await repl.call("insert", name="n1", text="before idle;")
            await repl.call("waitUntil", name="n2", field="text", contains="before idle;")
            await asyncio.sleep(9)  # more than twice nginx's 4 s read timeout
            for name in ("n1", "n2"):
                status = await repl.call("status", name=name)
                assert status["connected"] and status["closes"] == [], (status, server.log)
            await repl.call("insert", name="n2", text="after idle;")
            await repl.call("waitUntil", name="n1", field="text", contains="after idle;")
    finally:
        proxy.send_signal(signal.SIGQUIT)
        proxy.wait(10)
        server.stop()


def test_pm2_runs_the_server(tmp_path: Path) -> None:
    """deploy/ecosystem.config.cjs started by npm's pm2: the server answers and serves."""
    port = free_port()
    env = {**os.environ, "PM2_HOME": str(tmp_path / "pm2"), "CAPTIFY_WS_PORT": str(port),
           "CAPTIFY_WS_STORE": "memory"}
    pm2 = str(NODE_BIN / "pm2")
    subprocess.run([pm2, "start", str(ROOT / "deploy" / "ecosystem.config.cjs")], env=env,
                   check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, subprocess.run(
                [pm2, "logs", "--nostream", "--lines", "50"], env=env, capture_output=True,
                text=True).stdout
            time.sleep(0.2)

        async def talk() -> dict[str, Any]:
            async with connect(f"ws://127.0.0.1:{port}/ws/fabric?documentId=pm2") as ws:
                return dict(json.loads(await ws.recv()))
        assert asyncio.run(talk())["type"] == "connected"
        listing = json.loads(subprocess.run([pm2, "jlist"], env=env, check=True,
                                            capture_output=True, text=True).stdout)
        assert [app["name"] for app in listing] == ["captify-ws"]
        assert listing[0]["pm2_env"]["status"] == "online"
    finally:
        subprocess.run([pm2, "kill"], env=env, capture_output=True, timeout=60)


def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    """deploy/captify-ws.service passes systemd-analyze verify (with this checkout's paths)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed")
    unit = (ROOT / "deploy" / "captify-ws.service").read_text()
    unit = unit.replace("/opt/captify-ws", str(ROOT)).replace("User=captify", "User=root") \
        .replace("Group=captify", "Group=root")
    path = tmp_path / "captify-ws.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "captify-ws.service" in line and "is not a valid" not in line.lower()
                and ("error" in line.lower() or "unknown" in line.lower()
                     or "invalid" in line.lower())]
    assert problems == [], result.stdout + result.stderr
