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
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from captify_ws import __version__, logs
from captify_ws.config import Settings
from captify_ws.errors import CaptifyError, ConfigError
from captify_ws.imports import import_attribute
from captify_ws.memory import (
    freeze_startup_objects,
    keep_large_blocks_returnable,
    trim_heap_every,
)
from captify_ws.transport.handoff import make_channels
from captify_ws.values import parse_bool, show_value

logger = logging.getLogger("captify_ws")


class _HelpFormatter(argparse.HelpFormatter):
    """Wider help columns, no line break inside a hyphenated word (``--app-dir``); each
    option's default is part of its help text already."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    """``captify-ws [--version] serve [options]``: every :class:`Settings` field is a flag.

    Flags are read as text here and parsed by :meth:`Settings.load`, so a bad value gets the
    same one-line explanation from a flag as from its environment variable.
    """
    parser = argparse.ArgumentParser(
        prog="captify-ws",
        description="One WebSocket server for every real-time feature of a web product.")
    parser.add_argument("--version", action="version", version=f"captify-ws {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve HTTP and WebSockets on one port", formatter_class=_HelpFormatter,
        description="Serve HTTP and WebSockets on one port. Every option can also be set "
                    "with the environment variable shown; flags win.",
        epilog="Sizes take k, m and g suffixes (16m, 512k, 1g); durations ending in -s are "
               "seconds and in -ms milliseconds. Documentation: README.md.")
    for option in Settings.options():
        meta = option.metadata
        shown = meta["shown"] or ("none" if meta["secret"] else
                                  show_value(option.default, meta["parse"]))
        text = f"{meta['help']} [{Settings.env_name(option.name)}; default: {shown}]"
        flag = Settings.flag_name(option.name)
        if meta["toggle"]:
            serve.add_argument(flag, dest=option.name, default=None,
                               action=argparse.BooleanOptionalAction, help=text)
        else:
            serve.add_argument(flag, dest=option.name, default=None,
                               metavar=meta["metavar"] or _metavar(option.name, meta["parse"]),
                               help=text)
    return parser


def _metavar(name: str, parse: Any) -> str:
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s"):
        return "SECONDS"
    if parse in (int, float):
        return "N"
    if parse is parse_bool:
        return "BOOL"
    return name.upper()


def _listen_socket(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything else starts (so that a taken port is one
    line and nothing else); IPv6 when the host has a colon, as uvicorn does."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _bind_error(settings: Settings, exc: OSError) -> str | None:
    """The one line for an address that cannot be listened on, or None for other errors."""
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {settings.host}:{settings.port}: the port is already in "
                f"use; stop the other server or pick another port with --port or "
                f"CAPTIFY_WS_PORT")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot listen on {settings.host}: no such address on this machine"
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {settings.host}:{settings.port}: permission denied "
                f"(ports below 1024 need privileges; pick another with --port)")
    return None


async def _serve(settings: Settings, sock: socket.socket) -> int:
    """Serve until SIGINT/SIGTERM, the process's memory kept returnable (memory.py)."""
    keep_large_blocks_returnable()
    trimmer = asyncio.get_running_loop().create_task(trim_heap_every())
    try:
        return await _serve_trimmed(settings, sock)
    finally:
        trimmer.cancel()


async def _serve_trimmed(settings: Settings, sock: socket.socket) -> int:
    """Serve on ``settings.transport`` until SIGINT/SIGTERM; the process's exit status."""
    from captify_ws.app import AppLifespan, create_app
    from captify_ws.server import Server
    from captify_ws.transport.handoff import Handoff
    from captify_ws.transport.native_server import NativeServer

    http_app = import_attribute(settings.http_app, "http_app") if settings.http_app else None
    server = Server(settings)
    app = create_app(http_app=http_app, server=server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    port = sock.getsockname()[1]

    if settings.transport == "asgi":
        from captify_ws.transport.asgi import uvicorn_config

        config = uvicorn_config(app, settings)
        uv = _QuietUvicorn(config)
        task = loop.create_task(uv.serve(sockets=[sock]))
        while not uv.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        if task.done():
            await task
            return 1
        freeze_startup_objects()
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
        await native.start(sock, Handoff.from_environ(os.environ,
                                                      settings.worker_affinity_limit))
    except BaseException:
        await server.stop()
        raise
    freeze_startup_objects()
    _announce(settings, port, "native")
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
    """The start line: where to connect, and where the demo is."""
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    url = f"http://{host}:{port}"
    logs.announce(f"captify-ws {__version__} listening on {url} (WebSockets at "
                  f"ws://{host}:{port}/ws/fabric, transport {transport}, store "
                  f"{settings.store}, auth {settings.effective_auth})", url=url)
    if settings.demo_enabled:
        logs.announce(f"demo: open {url}/demo in two browser tabs and type",
                      demo=f"{url}/demo")


def serve(settings: Settings) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code (0 after a clean
    stop, 1 when it cannot listen or stop in time, 2 for a configuration error)."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        sock = _listen_socket(settings)
    except OSError as exc:
        line = _bind_error(settings, exc)
        if line is None:
            raise
        logs.fatal(line, settings.log_format)
        return 1
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(_serve(settings, sock))
    except CaptifyError as exc:
        logs.fatal(str(exc), settings.log_format)
        return 2
    finally:
        sock.close()


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """``--workers N``: run N ``serve`` processes on one port (SO_REUSEPORT), forward
    SIGINT/SIGTERM to them, and start a worker again if one dies."""
    logs.configure(settings.log_level, settings.log_format)
    # Bind (not listen) the port with SO_REUSEPORT first: a port taken by another program is
    # one line here rather than N workers failing, and port 0 becomes one port for all.
    reserve = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    try:
        # SO_REUSEADDR as the workers set it: a restart must not wait for the last run's
        # connections in TIME_WAIT
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((settings.host, settings.port))
    except OSError as exc:
        reserve.close()
        line = _bind_error(settings, exc)
        if line is None:
            raise
        logs.fatal(line, settings.log_format)
        return 1
    port = reserve.getsockname()[1]
    env = {**os.environ, "CAPTIFY_WS_WORKERS": "1", "CAPTIFY_WS_REUSE_PORT": "true",
           "CAPTIFY_WS_PORT": str(port)}
    args = [sys.executable, "-m", "captify_ws", *_without_worker_flags(argv)]
    stopping = False
    # Document affinity (transport/handoff.py): the channels outlive any one worker.
    channels, channel_env, channel_fds = make_channels(settings.workers)

    def spawn(index: int) -> subprocess.Popen[bytes]:
        # In a session of their own: Ctrl+C in a terminal reaches the supervisor only, which
        # stops every worker the same way (a worker still importing would otherwise print a
        # KeyboardInterrupt traceback).
        return subprocess.Popen(args, env={**env, "CAPTIFY_WS_WORKER_INDEX": str(index),
                                           **channel_env[index]},
                                pass_fds=channel_fds, start_new_session=True)

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [spawn(index) for index in range(settings.workers)]
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
                logs.fatal(f"worker {index} exited with status {code} while starting",
                           settings.log_format)
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
    for channel in channels:
        channel.close()
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
    toggles = {option.name for option in Settings.options() if option.metadata["toggle"]}
    values = {option.name: getattr(args, option.name) for option in Settings.options()}
    try:
        settings = Settings.load(
            os.environ,
            overrides={name: value for name, value in values.items() if name in toggles},
            flags={name: value for name, value in values.items() if name not in toggles})
    except ConfigError as exc:
        wants_json = (args.log_format or os.environ.get("CAPTIFY_WS_LOG_FORMAT", "")) == "json"
        logs.fatal(str(exc), "json" if wants_json else "text")
        return 2
    # The folder the command runs from is importable, as with uvicorn and gunicorn: a
    # console script's sys.path[0] is its bin directory, not the working directory.
    sys.path.insert(0, os.path.abspath(settings.app_dir))
    if settings.workers > 1:
        return supervise(settings, list(argv if argv is not None else sys.argv[1:]))
    return serve(settings)
