"""``captify-ws serve``: the command line, generated from :class:`~captify_ws.config.Settings`.

Every option is also an environment variable (``--max-message-size`` ↔
``CAPTIFY_WS_MAX_MESSAGE_SIZE``); flags win over the environment, which wins over defaults.
Configuration mistakes and a taken port end in one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from captify_ws import __version__, logs
from captify_ws.config import Settings
from captify_ws.errors import CaptifyError, ConfigError
from captify_ws.imports import import_attribute

logger = logging.getLogger("captify_ws")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captify-ws",
        description="One WebSocket server for every real-time feature of a web product.")
    parser.add_argument("--version", action="version", version=f"captify-ws {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve HTTP and WebSockets on one port",
        description="Serve HTTP and WebSockets on one port. Every option can also be set "
                    "with the environment variable shown; flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for option in Settings.options():
        flag = "--" + option.name.replace("_", "-")
        default = option.default
        if isinstance(default, tuple):
            default = ",".join(default) or "none"
        elif option.metadata["secret"]:
            default = "none"
        serve.add_argument(
            flag, dest=option.name, default=None, type=option.metadata["parse"],
            metavar=option.metadata["metavar"] or option.name.upper(),
            help=f"{option.metadata['help']} [env {Settings.env_name(option.name)}; "
                 f"default {default}]")
    return parser


def _configure_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)


async def _serve(settings: Settings) -> int:
    from captify_ws.app import AppLifespan, create_app
    from captify_ws.server import Server
    from captify_ws.transport.native import NativeServer

    http_app = import_attribute(settings.http_app, "http_app") if settings.http_app else None
    server = Server(settings)
    app = create_app(http_app=http_app, server=server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    if settings.transport == "asgi":
        from captify_ws.transport.asgi import uvicorn_config

        config = uvicorn_config(app, settings)
        uv = _QuietUvicorn(config)
        sock = config.bind_socket()
        port = sock.getsockname()[1]
        task = loop.create_task(uv.serve(sockets=[sock]))
        while not uv.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        if task.done():
            await task
            return 1
        _announce(settings, port, "asgi")
        await stop.wait()
        uv.should_exit = True
        await task
        return 0

    await server.start()
    inner = None
    if http_app is not None:
        inner = AppLifespan(http_app, {"type": "lifespan", "asgi": {"version": "3.0"},
                                       "state": {}})
        await inner.startup()
    native = NativeServer(server, app)
    try:
        await native.start()
    except BaseException:
        await server.stop()
        raise
    _announce(settings, native.port, "native")
    await stop.wait()
    logger.info("shutting down: closing %d connections with 1012",
                server.get_connection_count())
    bound = settings.shutdown_timeout_s
    try:
        async with asyncio.timeout(bound):
            await native.stop()
            if inner is not None:
                await inner.shutdown()
            await server.stop(timeout=bound * 0.8)
    except TimeoutError:
        logger.error("shutdown took longer than %.0f s; exiting anyway", bound)
        return 1
    logger.info("stopped")
    return 0


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: ``_serve`` owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _announce(settings: Settings, port: int, transport: str) -> None:
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(f"captify-ws listening on http://{host}:{port} "
          f"(WebSockets at ws://{host}:{port}/ws/fabric, transport {transport}, "
          f"store {settings.store})", file=sys.stderr, flush=True)


def serve(settings: Settings) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    _configure_logging(settings)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(_serve(settings))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"captify-ws: cannot listen on {settings.host}:{settings.port}: the port is "
                  f"already in use; stop the other server or pick another port with --port "
                  f"or CAPTIFY_WS_PORT", file=sys.stderr)
            return 1
        if exc.errno == errno.EADDRNOTAVAIL:
            print(f"captify-ws: cannot listen on {settings.host}: no such address on this "
                  f"machine", file=sys.stderr)
            return 1
        raise
    except CaptifyError as exc:
        print(f"captify-ws: {exc}", file=sys.stderr)
        return 2


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """``--workers N``: run N ``serve`` processes on one port (SO_REUSEPORT), forward
    SIGINT/SIGTERM to them, and start a worker again if one dies."""
    _configure_logging(settings)
    port = settings.port
    reserve = None
    if port == 0:  # every worker must listen on the same port: pick one now
        reserve = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((settings.host, 0))
        port = reserve.getsockname()[1]
    env = {**os.environ, "CAPTIFY_WS_WORKERS": "1", "CAPTIFY_WS_REUSE_PORT": "true",
           "CAPTIFY_WS_PORT": str(port)}
    args = [sys.executable, "-m", "captify_ws", *_without_worker_flags(argv)]
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, env={**env, "CAPTIFY_WS_WORKER_INDEX": str(index)})

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [spawn(index) for index in range(settings.workers)]
    if reserve is not None:
        reserve.close()
    logger.info("supervising %d workers on port %d", settings.workers, port)
    started = time.monotonic()
    while True:
        time.sleep(0.2)
        if stopping:
            break
        for index, worker in enumerate(workers):
            code = worker.poll()
            if code is None:
                continue
            if time.monotonic() - started < 5:
                print(f"captify-ws: worker {index} exited with status {code} while starting",
                      file=sys.stderr)
                on_signal(signal.SIGTERM, None)
                break
            logger.error("worker %d exited with status %d; starting it again", index, code)
            workers[index] = spawn(index)
    deadline = time.monotonic() + 30
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0 if all(worker.returncode == 0 for worker in workers) else 1


def _without_worker_flags(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--port", "--reuse-port"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--port=", "--reuse-port=")):
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    overrides = {option.name: getattr(args, option.name) for option in Settings.options()}
    try:
        settings = Settings.load(os.environ, overrides)
    except ConfigError as exc:
        print(f"captify-ws: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return supervise(settings, list(argv if argv is not None else sys.argv[1:]))
    return serve(settings)
