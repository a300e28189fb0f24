"""Test helpers: run a real server on a free port, drive real clients (Python and npm)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection, connect

from captify_ws.app import create_app
from captify_ws.cli import _QuietUvicorn
from captify_ws.config import Settings
from captify_ws.server import Server
from captify_ws.transport.asgi import uvicorn_config
from captify_ws.transport.native_server import NativeServer
from captify_ws.types import ASGIApp
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"
NODE_BIN = JS / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent


@dataclass
class RunningServer:
    server: Server
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def fabric(self, document_id: str, client_id: str | None = None) -> str:
        query = {"documentId": document_id, **({"clientID": client_id} if client_id else {})}
        return f"{self.ws}/ws/fabric?{urlencode(query)}"


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"port": 0, "store": "memory", "room_grace_s": 0.2}
    values.update(overrides)
    return Settings(**values)


async def uvicorn_started(server: Any, task: asyncio.Task[None], timeout: float = 15.0) -> None:
    """Wait until ``server`` (a uvicorn Server serving in ``task``) listens; one that exited
    before it did raises what stopped it, and one that never starts fails at the deadline."""
    await eventually(lambda: server.started or task.done(), "uvicorn to start", timeout)
    if not server.started:
        task.result()  # raises what stopped it
        raise AssertionError("uvicorn exited before it started listening")


@contextlib.asynccontextmanager
async def running_server(transport: str = "native", http_app: ASGIApp | None = None,
                         extra_handlers: tuple[Any, ...] = (), store: Any = None,
                         extra_hooks: tuple[Any, ...] = (),
                         **overrides: Any) -> AsyncIterator[RunningServer]:
    """A real server in this process, listening on a free loopback port."""
    settings = test_settings(**overrides)
    server = Server(settings, handlers=extra_handlers, store=store, hooks=extra_hooks)
    app = create_app(http_app=http_app, server=server)
    if transport == "native":
        await server.start()
        native = NativeServer(server, app)
        await native.start()
        try:
            yield RunningServer(server, native.port)
        finally:
            await native.stop()
            await server.stop()
    else:
        config = uvicorn_config(app, settings, host="127.0.0.1", port=0)
        sock = config.bind_socket()
        uv = _QuietUvicorn(config)
        task = asyncio.get_running_loop().create_task(uv.serve(sockets=[sock]))
        await uvicorn_started(uv, task)
        try:
            yield RunningServer(server, sock.getsockname()[1])
        finally:
            uv.should_exit = True
            await task


class JsonClient:
    """A client of the JSON fabric protocol with its own pycrdt document."""

    def __init__(self, ws: ClientConnection, document_id: str) -> None:
        self.ws = ws
        self.document_id = document_id
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("text", type=Text)
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, ws_base: str, document_id: str, client_id: str) -> JsonClient:
        """Connected to ``<ws_base>/ws/fabric?documentId=…&clientID=…``, its ``connected``
        received."""
        ws = await connect(f"{ws_base}/ws/fabric?" + urlencode(
            {"documentId": document_id, "clientID": client_id}), max_queue=None)
        client = cls(ws, document_id)
        await client.expect("connected")
        return client

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def expect(self, kind: str, timeout: float = 5.0,
                     where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next message of this type (others are kept in ``inbox``)."""
        for index, message in enumerate(self.inbox):
            if message.get("type") == kind and (where is None or where(message)):
                return self.inbox.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind!r} message; got {self.inbox}")
            message = await self.recv(left)
            if message.get("type") == kind and (where is None or where(message)):
                return message
            self.inbox.append(message)

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds`` (to assert that nothing does)."""
        got = list(self.inbox)
        self.inbox.clear()
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(await self.recv(seconds))
        return got

    async def edit(self, text: str) -> bytes:
        """Append to the local text and send the update; returns the update."""
        before = self.doc.get_state()
        self.text += text
        update = self.doc.get_update(before)
        await self.send({"type": "update", "documentId": self.document_id,
                         "data": base64.b64encode(update).decode()})
        return update

    def apply(self, message: dict[str, Any]) -> None:
        data = message["data"]
        update = data["update"] if isinstance(data, dict) else data
        self.doc.apply_update(base64.b64decode(update))

    async def sync(self) -> None:
        await self.send({"type": "sync", "documentId": self.document_id})
        self.apply(await self.expect("synced"))


@contextlib.asynccontextmanager
async def json_client(running: RunningServer, document_id: str,
                      client_id: str | None = None) -> AsyncIterator[JsonClient]:
    # max_queue=None: a test client that does not read everything must still see the server's
    # close frame (websockets stops reading the socket when its queue is full).
    async with connect(running.fabric(document_id, client_id), max_queue=None) as ws:
        client = JsonClient(ws, document_id)
        client.connected = await client.expect("connected")  # type: ignore[attr-defined]
        yield client


class ProviderRepl:
    """Real npm y-websocket WebsocketProviders in a Node process (tests/js/provider_repl.mjs)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, impl: str = "v3", script: str = "provider_repl.mjs",
                    env: dict[str, str] | None = None) -> ProviderRepl:
        process = await asyncio.create_subprocess_exec(
            "node", str(JS / script), "--impl", impl, cwd=str(JS),
            env={**os.environ, **env} if env else None,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert json.loads(line)["ready"], line
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                break
            reply = json.loads(line)
            future = self._waiting.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("provider REPL exited"))

    async def call(self, op: str, wait: float = 30.0, **args: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"id": self._next, "op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()
        reply = await asyncio.wait_for(future, wait)
        if not reply["ok"]:
            raise AssertionError(f"{op} failed: {reply['error']}")
        return reply

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("exit", wait=5)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def editors() -> AsyncIterator[ProviderRepl]:
    """Real prosemirror-collab editors in a Node process (tests/js/pm_repl.mjs)."""
    repl = await ProviderRepl.start(script="pm_repl.mjs")
    try:
        yield repl
    finally:
        await repl.close()


@contextlib.asynccontextmanager
async def providers(impl: str = "v3", *, time_warp: float = 1) -> AsyncIterator[ProviderRepl]:
    """Real y-websocket providers; with ``time_warp`` K, their process's clock and timers run
    K times faster (tests/js/warp.mjs)."""
    repl = await ProviderRepl.start(
        impl, env={"CAPTIFY_TIME_WARP": str(time_warp)} if time_warp != 1 else None)
    try:
        yield repl
    finally:
        await repl.close()


@contextlib.asynccontextmanager
async def hocuspocus_providers() -> AsyncIterator[ProviderRepl]:
    """Real @hocuspocus/provider 2.15, 3.4 and 4.x providers in a Node process
    (tests/js/hocuspocus_repl.mjs)."""
    repl = await ProviderRepl.start(script="hocuspocus_repl.mjs")
    try:
        yield repl
    finally:
        await repl.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``captify-ws serve`` in a subprocess (for CLI, restart and kill -9 tests)."""

    LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None
        self._listening = threading.Event()

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the server and wait for its first "listening on" line, at most ``timeout``
        seconds: a server that hangs silently (or mid-line) or exits fails the test with its
        output instead of blocking it. The output is read by a thread from the start, so the
        server never blocks on a full pipe either."""
        self.process = subprocess.Popen(
            [str(VENV_BIN / "captify-ws"), "serve", *self.args], env=self.env, cwd=self.cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._listening = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if self._listening.wait(timeout) and self.port:
            return self
        exited = self.process.poll()
        if exited is None and self._listening.is_set():
            # The output ended: the process is exiting (its status may lag its pipe's end).
            with contextlib.suppress(subprocess.TimeoutExpired):
                exited = self.process.wait(timeout=5)
        self.process.kill()
        self.process.wait()
        self._drainer.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        why = (f"exited with status {exited}" if exited is not None
               else f"printed no 'listening on' line within {timeout:g} s")
        raise AssertionError(f"server did not start ({why}):\n" + self.log)

    def _drain(self) -> None:
        """Read the server's output line by line until it closes; note the first start
        line's port (``start`` waits for that, or for the end of the output)."""
        assert self.process is not None and self.process.stdout is not None
        try:
            for line in self.process.stdout:
                self.output.append(line)
                if not self.port:
                    match = self.LISTENING.search(line)
                    if match:
                        self.port = int(match.group(1))
                        self._listening.set()
        except ValueError:  # the pipe was closed by stop()
            pass
        finally:
            self._listening.set()

    def listening_lines(self) -> int:
        """How many start lines the server printed (one per worker with ``--workers``)."""
        return sum(1 for line in list(self.output) if self.LISTENING.search(line))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.stop(signal.SIGKILL)
