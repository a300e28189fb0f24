"""Handlers: the registry, and a user's handler from outside the package."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws.config import Settings
from captify_ws.errors import ConfigError
from captify_ws.handlers.base import HandlerRegistry, load_handler
from captify_ws.server import Server
from tests.helpers import ROOT, ServerProcess, running_server


async def test_outside_handler_by_settings(transport: str) -> None:
    """CAPTIFY_WS_HANDLERS names a module:attribute; the handler serves its path."""
    async with running_server(transport,
                              handlers=("tests.outside.echo_handler:echo_handler",)) as srv, \
            connect(f"{srv.ws}/ws/echo?room=1") as ws:
        assert json.loads(await ws.recv()) == {"type": "hello", "query": {"room": "1"}}
        await ws.send("shout")
        assert await ws.recv() == "SHOUT"
        await ws.send(b"abc")
        assert await ws.recv() == b"cba"


def test_outside_handler_in_a_real_process() -> None:
    """`captify-ws serve` with CAPTIFY_WS_HANDLERS picks the handler up at start."""
    proc = ServerProcess(["--port", "0", "--store", "memory"],
                         env={"CAPTIFY_WS_HANDLERS": "tests.outside.echo_handler:echo_handler",
                              "PYTHONPATH": str(ROOT)})
    proc.start()
    try:
        async def talk() -> None:
            async with connect(f"{proc.ws}/ws/echo") as ws, connect(f"{proc.ws}/ws/echo") as w2:
                await ws.recv()
                await w2.recv()
                await ws.send("fail")
                error = json.loads(await ws.recv())
                assert error == {"type": "error", "message": "asked to fail"}
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1011
                left = json.loads(await w2.recv())
                assert left == {"type": "left", "code": 1011}
        asyncio.run(talk())
    finally:
        assert proc.stop() == 0


@pytest.mark.unit
def test_registry_longest_prefix_and_subpath() -> None:
    """/ws/fabric/doc-1 resolves to the fabric handler with subpath doc-1."""
    server = Server(Settings(store="memory"))
    route = server.route("/ws/fabric/doc%201")
    assert route is not None and route[0].path == "/ws/fabric" and route[1] == "doc%201"
    assert server.route("/ws/fabricate") is None
    assert server.route("/ws/other") is None


@pytest.mark.unit
def test_bad_handler_specs_are_config_errors() -> None:
    """Unimportable or incomplete handlers fail at start with a clear message."""
    server = Server(Settings(store="memory"))
    with pytest.raises(ConfigError, match="expected 'module:attribute'"):
        load_handler("nocolon", server)
    with pytest.raises(ConfigError, match="cannot import"):
        load_handler("no.such.module:x", server)
    with pytest.raises(ConfigError, match="has no"):
        load_handler("tests.outside.echo_handler:nothing", server)
    with pytest.raises(ConfigError, match="lacks"):
        load_handler("tests.outside.echo_handler:json", server)
    assert load_handler("tests.outside.echo_handler:EchoHandler", server).path == "/ws/echo"
    # a TypeError inside a factory is reported as it is, not retried without the server
    with pytest.raises(ConfigError, match=r"EchoHandler\.__init__\(\) takes 1 positional"):
        load_handler("tests.outside.echo_handler:broken_factory", server)
    with pytest.raises(ConfigError, match="takes the server as its one argument"):
        load_handler("tests.outside.echo_handler:two_argument_factory", server)
    registry = HandlerRegistry()
    registry.add(server.registry.by_name("fabric"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two handlers"):
        registry.add(server.registry.by_name("fabric"))  # type: ignore[arg-type]
