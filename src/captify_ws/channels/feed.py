"""One channel's feed on this instance: who receives its publications (live, ahead, pending,
in-process listeners) and the position (epoch, offset) delivered to them; the answer to a
subscribe. State only: :class:`~captify_ws.channels.feeds.Feeds` delivers and repairs."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from captify_ws.audience import Audience
from captify_ws.channels.types import ChannelClass
from captify_ws.connection import Connection, PreparedFrame

#: An in-process listener: ``(channel, offset, epoch, frame)`` for each publication, in order.
Listener = Callable[[str, int, str, str], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a subscribe: its frame, the replayed frames, and its position."""

    text: str
    replay: tuple[tuple[int, str], ...]
    offset: int
    epoch: str


class Feed:
    """This instance's subscribers of one channel, and the position delivered to them."""

    __slots__ = ("ahead", "busy", "channel", "closed", "early", "epoch", "idle", "klass",
                 "listeners", "live", "offset", "pending", "queue")

    def __init__(self, channel: str, klass: ChannelClass) -> None:
        self.channel = channel
        self.klass = klass
        self.epoch: str | None = None
        self.offset = 0
        #: subscribers up to date with ``offset``, ready for a broadcast
        self.live = Audience()
        #: subscribers whose answer was ahead of ``offset``: → the offset they have
        self.ahead: dict[Connection, int] = {}
        #: subscribers waiting for their answer: → what was delivered meanwhile
        self.pending: dict[Connection, list[tuple[int, PreparedFrame]]] = {}
        self.listeners: list[Listener] = []
        #: a repair or resync is running: publications wait in ``queue``
        self.busy = False
        #: set while not busy
        self.idle = asyncio.Event()
        self.idle.set()
        self.queue: deque[tuple[int, str, str]] = deque()
        #: publications heard before the first position was known
        self.early: list[tuple[int, str, str]] = []
        self.closed = False

    @property
    def empty(self) -> bool:
        return not (self.live or self.ahead or self.pending or self.listeners)
