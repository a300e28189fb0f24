"""The ASGI transport's writer: a send that fails for a reason other than a gone peer is logged
and ends the connection with 1011 at once (it used to end the writer silently, and the
connection later looked like a client that stopped reading)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from captify_ws.connection import ConnectionLimits, UpgradeRequest
from captify_ws.errors import CloseCode
from captify_ws.transport.asgi import AsgiConnection
from tests.polling import eventually

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("error", "closed_with"), [
    (ValueError("an ASGI server's bug"), CloseCode.INTERNAL_ERROR),
    (TypeError("a message it cannot take"), CloseCode.INTERNAL_ERROR),
    (OSError("the peer is gone"), None),  # expected: the peer went away, nothing to say
])
async def test_a_failed_send_ends_the_connection_and_is_logged(
        error: Exception, closed_with: int | None, caplog: pytest.LogCaptureFixture) -> None:
    """Per kind of send failure: the connection's end and the log say what happened."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        raise error

    conn = AsgiConnection(UpgradeRequest("/ws/fabric/d"), None, "d", send,  # type: ignore[arg-type]
                          limits=ConnectionLimits())
    with caplog.at_level(logging.ERROR, "captify_ws.transport"):
        conn.send_text("hello")
        await eventually(conn._writer.done, "the writer to end")
    assert len(sent) == 1
    assert conn.close_code == closed_with
    logged = [record for record in caplog.records if "sending on" in record.getMessage()]
    assert len(logged) == (1 if closed_with is not None else 0)
