"""The room's broadcast loop alone, in process: no sockets, no event loop turns between updates.

A room with ``--members`` y-websocket and as many JSON members (connections whose socket is a
counter) receives one update per turn from a y-websocket member; printed: microseconds per
update (integration and broadcast to every member), best of each of three rounds of 200. For an
A/B of two source trees, alternate runs pinned to one core::

    git archive <commit> src | tar -x -C /tmp/base
    for i in 1 2 3 4 5; do
      PYTHONPATH=/tmp/base/src taskset -c 0 .venv/bin/python bench/room_fanout.py --label base
      PYTHONPATH=src taskset -c 0 .venv/bin/python bench/room_fanout.py --label new
    done

It says where a change to the room costs per update or per copy; the end-to-end figures are
bench/run.py's (sockets, real clients, the peer servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, Text

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import Member, Origin


class Counter(Connection):
    """A connection whose socket counts the frames written to it."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        super().__init__(UpgradeRequest("/ws/fabric/r"), None, "r",  # type: ignore[arg-type]
                         limits=ConnectionLimits())
        self.frames = 0

    def _write(self, frame: PreparedFrame) -> None:
        self.frames += 1

    def _write_many(self, frames: Sequence[PreparedFrame]) -> None:
        self.frames += len(frames)

    def _transport_buffered(self) -> int:
        return 0

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        pass


async def run(members: int, label: str) -> dict[str, Any]:
    room = DocumentRoom("r", awareness_flush_s=0.05, awareness_renewal_s=10)
    counters: list[Counter] = []
    for index in range(members):
        for wire in ("yws", "json"):
            counter = Counter()
            counters.append(counter)
            room.join(Member(counter, f"{wire}{index}", wire))  # type: ignore[arg-type]
    writer = Member(Counter(), "writer", "yws")
    room.join(writer)
    origin = Origin("member", member=writer)
    source: Doc[Any] = Doc()
    text = source.get("t", type=Text)
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    for _ in range(600):
        text.insert(len(text), "abcdefgh")
    rounds = []
    for start in range(0, 600, 200):
        started = time.perf_counter()
        for update in updates[start:start + 200]:
            room.apply_update(update, origin)
            room.flush_pending()
        rounds.append(round((time.perf_counter() - started) / 200 * 1e6, 1))
    room.close()
    return {"label": label, "members": 2 * members + 1, "us_per_update": rounds,
            "copies": sum(counter.frames for counter in counters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000,
                        help="y-websocket members, and as many JSON members")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.members, args.label))))


if __name__ == "__main__":
    main()
