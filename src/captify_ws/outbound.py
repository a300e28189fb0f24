"""What every connection may make the server hold and spend: the limits one server shares.

* :class:`ConnectionLimits` — one frozen object per server with each connection's bounds (send
  budget, message rate and cost, inbox, send and close timeouts) and the server's counters.
* :class:`~captify_ws.inbound.InboundBudget` (``inbound.py``) — the bytes of partly received
  messages held for *all* connections, the inbound side of the same idea.
* :class:`OutboundBudget` — the bytes waiting to be sent to *all* connections (queues and
  transport buffers; a frame broadcast to many counts once, as it is one object in memory), and
  the connections whose output is stalled, oldest stall first. Past
  ``limit`` the connections stalled longest are dropped first (1013, then aborted: their peers
  are not reading, so the close frame cannot reach them anyway); a connection stalled longer than
  ``send_timeout_s`` is closed with 1013 and aborted if it does not finish the closing handshake.
  One timer for all stalled connections, none per connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from captify_ws.inbound import InboundBudget
from captify_ws.metrics import Stats

if TYPE_CHECKING:
    from captify_ws.config import Settings

logger = logging.getLogger("captify_ws.connection")


class Stallable(Protocol):
    """What :class:`OutboundBudget` asks of a connection (``captify_ws.Connection``)."""

    def too_slow(self, reason: str, *, abort: bool) -> None: ...


class Held(Protocol):
    """A frame as the ledger sees it (``captify_ws.PreparedFrame``)."""

    holders: int

    def __len__(self) -> int: ...


class OutboundBudget:
    """Bytes waiting for every connection of one server, and the stalled connections."""

    def __init__(self, limit: int = 1 << 30, send_timeout_s: float = 30.0) -> None:
        #: bytes allowed to wait across all connections (0: no global bound)
        self.limit = limit
        self.send_timeout_s = send_timeout_s
        #: bytes waiting now, as last measured by each connection
        self.total = 0
        self._stalled: dict[Stallable, float] = {}  # insertion order: oldest stall first
        self._timer: asyncio.TimerHandle | None = None
        self._shedding = False

    def add(self, delta: int) -> None:
        """A connection's waiting bytes changed by ``delta``; past the limit, shed."""
        self.total += delta
        if self.limit and self.total > self.limit and not self._shedding:
            self._shed()

    def hold(self, frame: Held) -> None:
        """A connection holds ``frame`` (queued, or in its full transport). A frame broadcast to
        many connections is one object in memory: it counts once, however many hold it."""
        if frame.holders == 0:
            self.add(len(frame))
        frame.holders += 1

    def release(self, frame: Held) -> None:
        frame.holders -= 1
        if frame.holders == 0:
            self.total -= len(frame)

    def stalled(self, conn: Stallable) -> None:
        """``conn``'s output stopped making progress (its transport is full) as of now."""
        if conn in self._stalled:
            return
        self._stalled[conn] = monotonic()
        if self._timer is None and self.send_timeout_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.send_timeout_s,
                                                                self._check)

    def progressed(self, conn: Stallable) -> None:
        """``conn``'s output moved again (or it is gone)."""
        self._stalled.pop(conn, None)

    def _shed(self) -> None:
        """Drop the connections stalled longest until the total fits again."""
        self._shedding = True
        try:
            for conn in list(self._stalled):
                if self.total <= self.limit:
                    break
                logger.warning("send buffers of all connections hold %d bytes (limit %d): "
                               "dropping the connection stalled longest", self.total, self.limit)
                self._stalled.pop(conn, None)
                conn.too_slow("server send buffers full", abort=True)
        finally:
            self._shedding = False

    def _check(self) -> None:
        """Close connections stalled longer than ``send_timeout_s``; re-arm for the next."""
        self._timer = None
        now = monotonic()
        for conn, since in list(self._stalled.items()):
            if now - since < self.send_timeout_s:
                self._timer = asyncio.get_running_loop().call_later(
                    self.send_timeout_s - (now - since), self._check)
                return
            self._stalled.pop(conn, None)
            conn.too_slow(f"no progress sending for {self.send_timeout_s:g} s", abort=False)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Limits shared by every connection of a server (one object, not one per connection),
    and the server's counters. Sizes in bytes, times in seconds."""

    #: bytes that may wait for one connection (queue and transport buffer), beyond one message
    #: that is larger than the budget by itself; past it → 1013
    send_budget: int = 8 << 20
    #: messages per second on average, and at once; past them → 4429
    message_rate: float = 1000.0
    message_burst: int = 20000
    #: every this many bytes of a message count as one more message against the rate
    message_cost_bytes: int = 16 << 10
    #: largest message, in bytes, and in frames (RFC 6455 §5.4 fragments); past them → 1009
    max_message_size: int = 16 << 20
    max_message_frames: int = 1024
    #: bytes of received messages that may wait for a busy handler before reading pauses
    inbox_bytes: int = 16 << 20
    #: after sending a close frame, the peer has this long to answer before the TCP connection
    #: is aborted (RFC 6455 §7.1.1)
    close_timeout_s: float = 5.0
    stats: Stats = field(default_factory=Stats)
    outbound: OutboundBudget = field(default_factory=OutboundBudget)
    inbound: InboundBudget = field(default_factory=InboundBudget)


def connection_limits(settings: Settings, stats: Stats) -> ConnectionLimits:
    """The limits of a server's connections, from its settings."""
    return ConnectionLimits(
        send_budget=settings.send_budget, message_rate=settings.message_rate,
        message_burst=settings.message_burst, message_cost_bytes=settings.message_cost_bytes,
        max_message_size=settings.max_message_size,
        max_message_frames=settings.max_message_frames, inbox_bytes=settings.max_message_size,
        close_timeout_s=settings.close_timeout_s, stats=stats,
        outbound=OutboundBudget(settings.max_outbound_bytes, settings.send_timeout_s),
        inbound=InboundBudget(settings.max_inbound_bytes))
