"""Running README blocks as a reader would: one function per mode (see readme_blocks.MODES)."""

from __future__ import annotations

import ast
import contextlib
import http.server
import inspect
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from playwright.async_api import Page
from websockets.sync.client import connect

from tests.browser import chromium
from tests.helpers import JS, NODE_BIN, ROOT, VENV_BIN, free_port, running_server
from tests.polling import eventually_sync
from tests.readme_blocks import Block, output_matches, rewrite_port

API_KEY = "change-me"  # the README's own example key; the README server runs with it
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def reader_env(**extra: str) -> dict[str, str]:
    """The environment of a reader who followed the quick start: the virtualenv activated
    (its bin first on PATH), no CAPTIFY_WS_* left over from the test run, no PYTHONPATH."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CAPTIFY_WS_") and key != "PYTHONPATH"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env.update(extra)
    return env


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    eventually_sync(check, what, timeout, interval=0.05)


def connections(port: int, document_id: str) -> int:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/connections",
                       params={"documentId": document_id},
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    answer.raise_for_status()
    count: int = answer.json()["count"]
    return count


# -- shell, python ---------------------------------------------------------------------------

_SHELL_PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --silent --show-error "$@"; echo; }
"""


def run_shell(block: Block, port: int, cwd: Path) -> str:
    script = _SHELL_PRELUDE + rewrite_port(block.program, port)
    result = subprocess.run(["bash", "-c", script], cwd=cwd, env=reader_env(),
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}:\n{output}"
    return output


def run_python(block: Block, port: int, cwd: Path) -> str:
    script = cwd / f"readme_line{block.line}.py"
    script.write_text(rewrite_port(block.program, port))
    result = subprocess.run([str(VENV_BIN / "python"), script.name], cwd=cwd,
                            env=reader_env(), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}:\n{output}"
    return output


async def run_in_server(block: Block) -> None:
    """Top-level ``await`` code, executed in this process next to a started server (what the
    README means by "from code running in the server's process"); ``server=redis``: the
    server uses the Redis broker under its default prefix, as the README's examples do."""
    broker = {"broker": "redis://127.0.0.1:6379/0"} if block.options.get("server") else {}
    async with running_server(**broker):
        code = compile(block.program, f"README.md:{block.line}", "exec",
                       flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, {"__name__": f"readme_line{block.line}"})
        if inspect.iscoroutine(result):
            await result


# -- processes that keep running -------------------------------------------------------------

class Background:
    """A README command left running, in its own process group, output collected."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, text=True,
                                        start_new_session=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def interrupt(self, timeout: float = 40.0) -> int:
        """Ctrl+C, as in a terminal: SIGINT to the whole group; SIGKILL after ``timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        wait_until(lambda: _group_gone(self.process.pid), "the command's processes to exit")
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def run_serve(block: Block, cwd: Path, store_url: str | None) -> str:
    """Start, check /healthz on the port it announces, stop with Ctrl+C."""
    code = block.program
    if store_url is not None:
        code = re.sub(r"postgresql://\S+", store_url, code)
    port = free_port()
    extra = {"CAPTIFY_WS_PORT": str(port)}
    if block.options.get("cwd") == "repo":  # keep the repository's own data/ untouched
        extra["CAPTIFY_WS_STORE"] = f"sqlite:///{cwd / 'readme-repo.db'}"
    command = Background(["bash", "-c", code],
                         ROOT if block.options.get("cwd") == "repo" else cwd,
                         reader_env(**extra))
    try:
        wait_until(lambda: "listening on" in command.output or command.process.poll() is not None,
                   "the server to start", timeout=180)
        assert command.process.poll() is None, f"it exited:\n{command.output}"
        assert f":{port} " in command.output, command.output
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.json() == {"status": "ok"}
    finally:
        command.interrupt()
    output = command.output
    assert re.search(r"\bstopped\b", output), f"no clean stop after Ctrl+C:\n{output}"
    for line in block.output:
        assert output_matches(rewrite_port(line, port), output), \
            f"the README shows {line!r}; the output was:\n{output}"
    assert "Traceback" not in output, output
    return output


def run_transcript(block: Block, port: int) -> None:
    """A wscat session in a real terminal (wscat only prompts and prints `< ` on a TTY)."""
    lines = rewrite_port(block.code, port).strip().splitlines()
    command, steps = lines[0], lines[1:]
    leader, follower = pty.openpty()
    process = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=reader_env(),
                               stdin=follower, stdout=follower, stderr=follower,
                               start_new_session=True)
    os.close(follower)
    seen = ""
    received: list[str] = []

    def pump(seconds: float) -> None:
        nonlocal seen
        ready, _, _ = select.select([leader], [], [], seconds)
        if ready:
            with contextlib.suppress(OSError):
                seen += os.read(leader, 65536).decode(errors="replace")
        received[:] = [part.strip()[2:] for part in re.split(r"[\r\n]+", _ANSI.sub("", seen))
                       if part.strip().startswith("< ")]

    try:
        consumed = 0
        for step in steps:
            if step.startswith("> "):
                os.write(leader, step[2:].encode() + b"\r")
                continue
            assert step.startswith("< "), f"a transcript line starts with '> ' or '< ': {step}"
            deadline = time.monotonic() + 30
            while len(received) <= consumed:
                assert time.monotonic() < deadline, f"waiting for {step}; terminal:\n{seen}"
                assert process.poll() is None, f"the command exited:\n{seen}"
                pump(0.1)
            assert json.loads(received[consumed]) == json.loads(step[2:]), \
                f"expected {step[2:]}\n     got {received[consumed]}"
            consumed += 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(leader)


def run_asgi(block: Block, cwd: Path) -> None:
    """The block is a module of the reader's app: uvicorn serves ``app=NAME``, and
    captify-ws answers through it (/healthz, a /ws/fabric connection)."""
    module = f"readme_app_line{block.line}"
    (cwd / f"{module}.py").write_text(block.program)
    port = free_port()
    server = Background([str(VENV_BIN / "python"), "-m", "uvicorn",
                         f"{module}:{block.options['app']}", "--port", str(port)], cwd,
                        reader_env())
    try:
        wait_until(lambda: "Uvicorn running" in server.output
                   or server.process.poll() is not None, "uvicorn to start", timeout=60)
        assert server.process.poll() is None, server.output
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.json() == {"status": "ok"}, health.text
        with connect(f"ws://127.0.0.1:{port}/ws/fabric?documentId=asgi-check") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
    finally:
        code = server.interrupt()
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output


@contextlib.contextmanager
def _connection_seen(port: int, document_id: str | None) -> Iterator[None]:
    """Around a block that must connect: none before (so that the one after is its own)."""
    if document_id is not None:
        wait_until(lambda: connections(port, document_id) == 0,
                   f"earlier connections to {document_id} to close")
    yield


def run_node(block: Block, port: int) -> str:
    script = JS / f".readme-line{block.line}.mjs"
    script.write_text(rewrite_port(block.program, port))
    document_id = block.options.get("connects")
    try:
        with _connection_seen(port, document_id):
            node = Background(["node", script.name], JS, reader_env())
            try:
                if document_id is not None:
                    wait_until(lambda: node.process.poll() is not None
                               or connections(port, document_id) > 0,
                               f"a connection to {document_id}")
                    assert node.process.poll() is None, f"node exited:\n{node.output}"
                if "expect" in block.options:
                    wait_until(lambda: block.options["expect"] in node.output
                               or node.process.poll() is not None, "the expected output")
            finally:
                code = node.interrupt()
    finally:
        script.unlink()
    output = node.output
    assert code in (0, -signal.SIGINT, 130), f"node exited with {code}:\n{output}"
    assert "Error" not in output, output
    assert block.options.get("expect", "") in output, output
    return output


def bundle(code: str) -> str:
    """esbuild (pinned in tests/js) bundles browser code and its npm imports."""
    result = subprocess.run([str(NODE_BIN / "esbuild"), "--bundle", "--format=iife",
                             "--sourcefile=readme.js", "--log-level=error"], input=code,
                            cwd=JS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def run_browser(block: Block, port: int) -> None:
    """Browser JavaScript (``browser``: bundled, on a blank page) or an HTML snippet
    (``html``: the page itself, served from a local web server of its own)."""
    document_id = block.options.get("connects")
    with _connection_seen(port, document_id):
        async with chromium() as browser:
            page = await browser.new_page()
            errors: list[str] = []
            logged: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda message: (errors if message.type == "error"
                                                else logged).append(message.text))
            code = rewrite_port(block.program, port)
            with _page_server(code if block.mode == "html" else _BLANK) as url:
                await page.goto(url)
                if block.mode == "browser":
                    await page.add_script_tag(content=bundle(code))
                await _watch_page(block, port, page, errors, logged)


_BLANK = '<!doctype html><title>README example</title><div id="editor"></div>'


async def _watch_page(block: Block, port: int, page: Page, errors: list[str],
                      logged: list[str]) -> None:
    """Wait for what the marker asks (a console line, a connection); no error meanwhile."""
    deadline = time.monotonic() + 20
    if "console" in block.options:
        while not any(block.options["console"] in text for text in logged):
            assert not errors, errors
            assert time.monotonic() < deadline, f"the page logged only {logged}"
            await page.wait_for_timeout(50)
    document_id = block.options.get("connects")
    if document_id is not None:
        while connections(port, document_id) == 0:
            assert not errors, errors
            assert time.monotonic() < deadline, f"no connection to {document_id}"
            await page.wait_for_timeout(50)
    await page.wait_for_timeout(200)  # errors right after connecting surface here
    assert not errors, errors


@contextlib.contextmanager
def _page_server(html: str) -> Iterator[str]:
    """The page on a web server of its own on loopback, as a reader's dev server would serve
    it (a page of about:blank or of a route Playwright fulfils counts as public to Chromium's
    local network access checks, which then block connections to localhost)."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
