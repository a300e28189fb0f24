"""Tiptap 3 (Collaboration + CollaborationCaret) on Tiptap's own HocuspocusProvider, in two
headless Chromium pages against /ws/hocuspocus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, XmlFragment

from tests.helpers import JS, NODE_BIN, ROOT, running_server
from tests.polling import eventually

ARTIFACTS = ROOT / "test-artifacts"
PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body { font: 16px/1.5 sans-serif; margin: 24px; }
#editor { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; min-height: 120px; }
.ProseMirror:focus { outline: none; }
.collaboration-carets__caret { border-left: 1px solid; border-right: 1px solid;
  margin-left: -1px; margin-right: -1px; position: relative; word-break: normal; }
.collaboration-carets__label { border-radius: 3px 3px 3px 0; color: #fff; font-size: 12px;
  font-weight: 600; left: -1px; padding: 0.1rem 0.3rem; position: absolute; top: -1.4em;
  white-space: nowrap; }
</style></head><body><h3>%s</h3><div id="editor"></div></body></html>"""


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    return path


def _bundle(out: Path) -> Path:
    """The page's script: tests/js/tiptap_hocuspocus_page.mjs and the pinned npm packages,
    bundled for the browser with esbuild."""
    target = out / "page.js"
    subprocess.run([str(NODE_BIN / "esbuild"), str(JS / "tiptap_hocuspocus_page.mjs"),
                    "--bundle", "--format=iife", "--target=es2020", "--log-level=warning",
                    f"--outfile={target}"], check=True, cwd=JS, timeout=120)
    return target


async def _state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("window.editorState()")
    return state


async def _until(page: Any, check: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    async def state_if_checked() -> dict[str, Any]:
        state = await _state(page)
        assert check(state), state
        return state

    found: dict[str, Any] = await eventually(state_if_checked, what, timeout, interval=0.1)
    return found


async def test_two_tiptap_pages_converge_and_see_each_others_carets(tmp_path: Path) -> None:
    """Two Tiptap editors on HocuspocusProviders type into one document: both show the same
    text, each shows the other's caret with its name, and the server's Y.XmlFragment has it."""
    from playwright.async_api import async_playwright

    script = _bundle(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_server() as srv, async_playwright() as play:
        browser = await play.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        try:
            pages = []
            for user, color in (("Ann", "#ff8800"), ("Ben", "#0088ff")):
                page = await browser.new_page(viewport={"width": 640, "height": 320})
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                await page.set_content(PAGE % f"{user} — Tiptap on /ws/hocuspocus")
                await page.add_script_tag(path=str(script))
                await page.evaluate("(o) => window.startEditor(o)", {
                    "url": f"{srv.ws}/ws/hocuspocus", "name": "tiptap-doc", "user": user,
                    "color": color})
                pages.append((page, user, errors))
            for page, _, _ in pages:
                state = await _until(page, lambda s: s["synced"], "sync")
                assert state["scope"] == "read-write"
            ann, ben = pages[0][0], pages[1][0]
            await ann.evaluate("window.typeAtEnd('Hello from Ann. ')")
            await _until(ben, lambda s: "Hello from Ann." in s["text"], "Ann's text at Ben")
            await ben.evaluate("window.typeAtEnd('And Ben.')")
            colors = {"Ann": "rgb(255, 136, 0)", "Ben": "rgb(0, 136, 255)"}
            for page, user, _ in pages:
                other = "Ben" if user == "Ann" else "Ann"
                caret = f"{other} {colors[other]}"
                await _until(page, lambda s: s["text"] == "Hello from Ann. And Ben.",
                             "the same text")
                await _until(page, lambda s, caret=caret: caret in s["carets"],
                             f"{other}'s caret at {user}")
                await _until(page, lambda s: s["unsynced"] == 0, "acknowledged changes")
            await ann.screenshot(path=str(ARTIFACTS / "tiptap-hocuspocus-ann.png"))
            await ben.screenshot(path=str(ARTIFACTS / "tiptap-hocuspocus-ben.png"))
            for _, _, errors in pages:
                assert errors == []
        finally:
            await browser.close()
        stored = await srv.server.get_document("tiptap-doc")
        assert stored is not None
        doc: Doc = Doc()
        doc.apply_update(stored)
        fragment = str(doc.get("default", type=XmlFragment))
        assert "Hello from Ann. And Ben." in fragment
    assert (ARTIFACTS / "tiptap-hocuspocus-ben.png").stat().st_size > 5_000
