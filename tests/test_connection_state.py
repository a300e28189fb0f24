"""A connection's life: the states and the transitions allowed between them (lifecycle.py)."""

from __future__ import annotations

import itertools

import pytest

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.lifecycle import TRANSITIONS, ConnectionState

pytestmark = pytest.mark.unit

S = ConnectionState


class Quiet:
    """A handler that does nothing."""

    path = "/ws/x"

    def on_connect(self, conn: Connection) -> None: ...

    def on_message(self, conn: Connection, message: str | bytes) -> None: ...

    def on_close(self, conn: Connection, code: int) -> None: ...

    def on_error(self, conn: Connection, error: Exception) -> None: ...


class Recorder(Connection):
    """A connection whose transport is a list of frames and a close code."""

    __slots__ = ("closed_with", "frames")

    def __init__(self) -> None:
        super().__init__(UpgradeRequest("/ws/x"), Quiet(), "", limits=ConnectionLimits())
        self.frames: list[bytes] = []
        self.closed_with: int | None = None

    def _write(self, frame: PreparedFrame) -> None:
        self.frames.append(frame.payload)

    def _transport_buffered(self) -> int:
        return 0

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        self.closed_with = code


def test_a_connection_has_no_instance_dict() -> None:
    """Its parts (receiving.py) add no __dict__: 10,000 idle connections stay small."""
    assert not hasattr(Recorder.__mro__[1](UpgradeRequest("/ws/x"), Quiet(), "",
                                           limits=ConnectionLimits()), "__dict__")


def test_states_only_move_forward() -> None:
    """Every allowed transition goes to a later state; CLOSED is final."""
    for state, targets in TRANSITIONS.items():
        assert all(target > state for target in targets)
    assert TRANSITIONS[S.CLOSED] == frozenset()
    assert set(TRANSITIONS) == set(S)


def test_a_connection_lives_connecting_open_closing_closed() -> None:
    """Upgrade done → OPEN; close() → CLOSING (frames no longer sent, the first code kept);
    the transport gone → CLOSED; later closes and losses change nothing."""
    conn = Recorder()
    assert conn.lifecycle is S.CONNECTING
    conn._to(S.OPEN)
    conn.send_frame(PreparedFrame.text("before"))
    conn.close(4400, "bad")
    assert conn.lifecycle is S.CLOSING and conn.closed_with == 4400
    conn.send_frame(PreparedFrame.text("after"))
    assert conn.frames == [b"before"]
    conn.close(1000)
    assert conn.close_code == 4400 and conn.closed_with == 4400
    conn.lost(1006)
    assert conn.lifecycle is S.CLOSED and conn.closed and conn.close_code == 4400
    conn.lost(1000)
    conn.close(1001)
    assert conn.lifecycle is S.CLOSED and conn.close_code == 4400


@pytest.mark.parametrize("path", list(itertools.permutations(list(S), 3)))
def test_any_sequence_of_requests_follows_the_table(path: tuple[S, S, S]) -> None:
    """Whatever is asked in whatever order, the state changes exactly when the table allows."""
    conn = Recorder()
    for wanted in path:
        before = conn.lifecycle
        moved = conn._to(wanted)
        assert moved == (wanted in TRANSITIONS[before])
        assert conn.lifecycle is (wanted if moved else before)
        assert conn.closed == (conn.lifecycle is S.CLOSED)
