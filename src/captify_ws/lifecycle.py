"""The states of a connection and the transitions between them, written as data (as
python-websockets' ``State`` and Starlette's ``WebSocketState``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class ConnectionState(enum.IntEnum):
    """Where a :class:`~captify_ws.connection.Connection` is in its life; ordered."""

    #: accepted by the transport, the upgrade not finished yet
    CONNECTING = 0
    #: upgraded: the gate (limits, authentication), then the handler, see its messages
    OPEN = 1
    #: a close frame was sent or received (RFC 6455 §7.1.1): nothing more is sent
    CLOSING = 2
    #: the transport is gone
    CLOSED = 3


#: state → the states it may move to; any other move is ignored (closing twice, a close after
#: the transport went away): every caller may ask, only the first one acts
TRANSITIONS: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.CONNECTING: frozenset({ConnectionState.OPEN, ConnectionState.CLOSING,
                                           ConnectionState.CLOSED}),
    ConnectionState.OPEN: frozenset({ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}
