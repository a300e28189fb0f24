"""What all connections together make the server hold of what they send: the inbound budget.

Each connection is bounded by itself (``max_message_size`` for a message, assembled from
fragments or in one frame), but not across connections: N connections each part-way through a
16 MiB message hold N x 16 MiB. :class:`InboundBudget` counts, for every connection, the bytes it
holds of messages not received in full — the fragments of a message without its final frame,
and the part of a frame already read into the transport's buffer (picows' read buffer, websockets'
reader) — and bounds their sum (``max_inbound_bytes``).

Past the bound, the connections holding the most are refused first, until the sum fits again:
each is closed with 1009 ("server receive buffers full") and its partial message is dropped; it
is not read any further (the socket is drained without buffering until the peer's end or
``close_timeout_s``). Refusing instead of pausing: a paused connection keeps what it holds, and
when every holder is paused none can finish, so the memory would stay held without end. The
largest holders go first: a client part-way through a normal message (an editor's update) holds
far less than one streaming a message of the maximal size, and is not the one refused.

What a complete message costs once it is handed to its handler is the inbox's and the handler's
to bound (``inbox_bytes``, the document quota), not this budget's.
"""

from __future__ import annotations

import logging
from typing import Protocol

logger = logging.getLogger("captify_ws.connection")

#: The close reason of a connection refused by the budget.
REFUSAL = "server receive buffers full"


class Holder(Protocol):
    """What :class:`InboundBudget` asks of a connection's transport (one per connection)."""

    def refuse_inbound(self, reason: str) -> None:
        """Close with 1009 and ``reason``, drop the partial message, read nothing more into
        memory. The budget has already stopped counting the holder."""


class InboundBudget:
    """Bytes of partly received messages held by every connection of one server, in bytes."""

    __slots__ = ("_held", "_shedding", "limit", "refusals", "total")

    def __init__(self, limit: int = 256 << 20) -> None:
        #: bytes of partly received messages allowed across all connections (0: no bound)
        self.limit = limit
        #: bytes held now, as last reported by each holder
        self.total = 0
        #: connections refused by the budget since the server started
        self.refusals = 0
        self._held: dict[Holder, int] = {}
        self._shedding = False

    def held_by(self, holder: Holder) -> int:
        """Bytes ``holder`` holds as last reported (0 when it holds none)."""
        return self._held.get(holder, 0)

    def hold(self, holder: Holder, size: int) -> bool:
        """``holder`` now holds ``size`` bytes of a message not received in full (0: none).
        Past the limit the largest holders are refused (:meth:`Holder.refuse_inbound`); answers
        ``False`` when ``holder`` itself was refused."""
        held = self._held
        old = held.get(holder, 0)
        if size == old:
            return True
        if size:
            held[holder] = size
        else:
            del held[holder]
        self.total += size - old
        if size > old and self.limit and self.total > self.limit and not self._shedding:
            return self._shed(holder)
        return True

    def forget(self, holder: Holder) -> None:
        """``holder`` is gone: what it held is freed."""
        self.total -= self._held.pop(holder, 0)

    def _shed(self, current: Holder) -> bool:
        """Refuse the largest holders until the total fits; whether ``current`` is left."""
        self._shedding = True
        try:
            for holder, size in sorted(self._held.items(), key=lambda item: -item[1]):
                if self.total <= self.limit:
                    break
                logger.warning("partly received messages of all connections hold %d bytes "
                               "(limit %d): refusing the connection holding the most (%d)",
                               self.total, self.limit, size)
                self.forget(holder)
                self.refusals += 1
                holder.refuse_inbound(REFUSAL)
        finally:
            self._shedding = False
        return current in self._held
