"""The demo page at /demo: a real Tiptap 3 editor in headless Chromium against `captify-ws
serve`, and a bundle that is never stale."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page

from captify_ws.config import Settings
from tests.browser import ARTIFACTS, chromium
from tests.helpers import ROOT, ServerProcess, free_port, running_server
from tests.polling import eventually_sync

DEMO = ROOT / "src" / "captify_ws" / "static" / "demo"
REBUILD = "run `make demo` (node demo/build.mjs) and commit src/captify_ws/static/demo/"


def _wait_log(server: ServerProcess, text: str, timeout: float = 10.0) -> None:
    def logged() -> bool:
        assert text in server.log, f"not in the output:\n{server.log}"
        return True

    eventually_sync(logged, repr(text), timeout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_bundle_is_built_from_the_current_inputs() -> None:
    """Every file that went into demo.js (demo/main.js, the pinned npm packages, the build
    script) still has the hash recorded when the bundle was built."""
    record = json.loads((DEMO / "demo.js.inputs.json").read_text())
    changed = [path for path, digest in record["files"].items()
               if not (ROOT / path).is_file() or _sha256(ROOT / path) != digest]
    assert not changed, f"the demo bundle is stale: {changed[:5]} changed; {REBUILD}"
    listing = "".join(f"{path} {digest}\n" for path, digest in sorted(record["files"].items()))
    combined = hashlib.sha256(f"esbuild {record['esbuild']}\n{listing}".encode()).hexdigest()
    assert combined == record["inputsSha256"], f"demo.js.inputs.json was edited; {REBUILD}"
    assert _sha256(DEMO / "demo.js") == record["bundleSha256"], \
        f"demo.js is not the bundle that was built; {REBUILD}"


def test_demo_build_reproduces_the_shipped_bundle(tmp_path: Path) -> None:
    """`node demo/build.mjs` rebuilds exactly the shipped bytes (also catching a new import
    that the recorded inputs cannot know about)."""
    subprocess.run(["node", str(ROOT / "demo" / "build.mjs"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    assert (tmp_path / "demo.js").read_bytes() == (DEMO / "demo.js").read_bytes(), REBUILD
    assert json.loads((tmp_path / "demo.js.inputs.json").read_text()) == \
        json.loads((DEMO / "demo.js.inputs.json").read_text()), REBUILD


def test_demo_is_packaged() -> None:
    """pyproject's package-data ships the page, its style and its bundle."""
    assert '"static/demo/*"' in (ROOT / "pyproject.toml").read_text()
    for name in ("index.html", "demo.css", "demo.js"):
        assert (DEMO / name).is_file(), name


def test_demo_on_by_default_only_on_loopback() -> None:
    """Unset, the demo follows the bind address; --demo/--no-demo decide otherwise."""
    assert Settings(host="127.0.0.1").demo_enabled
    assert Settings(host="::1").demo_enabled
    assert not Settings(host="0.0.0.0", auth="none").demo_enabled
    assert Settings(host="0.0.0.0", auth="none", demo=True).demo_enabled
    assert not Settings(host="127.0.0.1", demo=False).demo_enabled
    assert Settings.load({"CAPTIFY_WS_DEMO": "false"}).demo is False


async def test_demo_routes_and_no_demo() -> None:
    """/demo redirects to a document; assets have their types; --no-demo leaves /demo to
    nobody (404)."""
    async with running_server() as srv, httpx.AsyncClient(base_url=srv.http) as http:
        moved = await http.get("/demo")
        assert moved.status_code == 307
        assert moved.headers["location"] == "demo/welcome"
        page = await http.get("/demo/welcome")
        assert page.status_code == 200
        assert 'src="assets/demo.js"' in page.text
        script = await http.get("/demo/assets/demo.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.content == (DEMO / "demo.js").read_bytes()
        assert (await http.get("/demo/assets/../../config.py")).status_code == 404
        assert (await http.get("/demo/welcome/")).headers["location"] == "../welcome"
    async with running_server(demo=False) as srv, httpx.AsyncClient(base_url=srv.http) as http:
        assert (await http.get("/demo/welcome")).status_code == 404


async def _text(page: Page) -> str:
    """The document's text as the editor holds it (the DOM also holds the caret labels)."""
    text: str = await page.evaluate("captifyDemo.editor.getText()")
    return text


async def _wait_text(page: Page, expected: str) -> None:
    await page.wait_for_function(
        "t => window.captifyDemo?.editor.getText().includes(t)", arg=expected, timeout=15000)


async def _wait_status(page: Page, state: str) -> None:
    await page.wait_for_function(
        "s => document.getElementById('status').dataset.state === s", arg=state,
        timeout=20000)


async def test_demo_in_chromium_two_people_edit_one_document(tmp_path: Path) -> None:
    """`captify-ws serve` on SQLite; two browser tabs on /demo/<doc> edit and converge, each
    shows the other's name and colored caret, the indicator follows the connection, and after
    a server restart a reload still shows the text. Screenshot: test-artifacts/demo.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    args = ["--port", str(port), "--store", f"sqlite:///{tmp_path / 'demo.db'}",
            "--room-grace-s", "0.2"]
    server = ServerProcess(args, cwd=tmp_path).start()
    _wait_log(server, f"demo: open http://127.0.0.1:{port}/demo")
    url = f"http://127.0.0.1:{port}/demo/meeting-notes"
    try:
        async with chromium() as browser:
            ann = await (await browser.new_context()).new_page()
            bob = await (await browser.new_context()).new_page()
            errors: list[str] = []
            for page in (ann, bob):
                page.on("pageerror", lambda exc: errors.append(str(exc)))
            await ann.goto(url + "?name=Ann")
            await bob.goto(url + "?name=Bob")
            for page in (ann, bob):
                await _wait_status(page, "connected")
            assert await ann.locator("#invite-link").get_attribute("href") == url
            assert await ann.locator("#document-name").inner_text() == "meeting-notes"

            await ann.locator("#editor .tiptap").click()
            await ann.keyboard.type("Hello from Ann.")
            await _wait_text(bob, "Hello from Ann.")
            await bob.locator("#editor .tiptap").click()
            await bob.keyboard.press("End")
            await bob.keyboard.type(" And Bob.")
            await _wait_text(ann, "Hello from Ann. And Bob.")
            assert await _text(ann) == await _text(bob)

            # Each sees the other's caret, labelled with the name, and the list of people.
            for page, other in ((ann, "Bob"), (bob, "Ann")):
                label = page.locator(".collaboration-carets__label", has_text=other)
                await label.wait_for(timeout=10000)
                color = await label.evaluate("e => getComputedStyle(e).backgroundColor")
                assert color not in ("", "rgba(0, 0, 0, 0)"), color
                await page.locator("#people li", has_text=other).wait_for(timeout=10000)
            await ann.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

            # Server gone: the indicator says so. Back on the same SQLite file: the text is
            # there after a reload.
            assert server.stop() == 0
            await _wait_status(ann, "offline")
            server = ServerProcess(args, cwd=tmp_path).start()
            await _wait_status(bob, "connected")
            await ann.reload()
            await _wait_status(ann, "connected")
            await _wait_text(ann, "Hello from Ann. And Bob.")
            assert not errors, errors
    finally:
        server.stop()
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000


@pytest.mark.parametrize("host", ["0.0.0.0"])
def test_demo_not_announced_on_public_bind(host: str) -> None:
    """Bound beyond loopback (with explicit --auth none), the start line names no demo and
    /demo is 404."""
    server = ServerProcess(["--port", "0", "--host", host, "--auth", "none",
                            "--store", "memory"]).start()
    try:
        assert httpx.get(f"{server.http}/demo/welcome", timeout=5).status_code == 404
    finally:
        assert server.stop() == 0
    assert "listening on" in server.log
    assert "demo:" not in server.log  # the whole output: stop() read it to the end
