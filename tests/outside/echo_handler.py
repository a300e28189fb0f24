"""A user's handler living outside the captify_ws package, as a product would write one.

Registered with CAPTIFY_WS_HANDLERS=tests.outside.echo_handler:echo_handler.
"""

from __future__ import annotations

import json

from captify_ws import Connection


class EchoHandler:
    """Echoes text messages in upper case, and tells everyone connected when someone leaves."""

    path = "/ws/echo"

    def __init__(self) -> None:
        self.connections: set[Connection] = set()

    async def on_connect(self, conn: Connection) -> None:
        self.connections.add(conn)
        conn.send_text(json.dumps({"type": "hello", "query": dict(conn.request.query)}))

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        if isinstance(message, bytes):
            conn.send_bytes(message[::-1])
        elif message == "fail":
            raise RuntimeError("asked to fail")
        else:
            conn.send_text(message.upper())

    def on_close(self, conn: Connection, code: int) -> None:
        self.connections.discard(conn)
        for other in self.connections:
            other.send_text(json.dumps({"type": "left", "code": code}))

    def on_error(self, conn: Connection, error: Exception) -> None:
        conn.send_text(json.dumps({"type": "error", "message": str(error)}))


echo_handler = EchoHandler()


def broken_factory(server: object) -> EchoHandler:
    """A factory that fails inside with a TypeError of its own."""
    return EchoHandler(*[server])  # type: ignore[call-arg]


def two_argument_factory(server: object, extra: object) -> EchoHandler:
    """Not a factory captify-ws can call."""
    return EchoHandler()
