"""The recovery decision: replay everything a client missed, or nothing (and the state).

A client that subscribes with ``since {offset, epoch}`` gets either every publication after
``offset``, in order, or — when that cannot be done completely — ``recovered:false`` with a
reason and the channel's state. Never a partial replay (the complaint about Socket.IO and
Centrifugo's early versions: a client cannot tell what it missed). Reasons:

* ``epoch`` — the stream is not the one the client knew (the backend lost it: Redis restart,
  process restart on the memory backend, expiry of the position), or the client's offset was
  never reached in this epoch;
* ``expired`` — the history is gone (its time to live passed) though the position is kept;
* ``trimmed`` — the oldest missed publication was trimmed by the history's size cap;
* ``too_far`` — more publications (or bytes) missed than one recovery may replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from captify_ws.channels.types import StreamRead
from captify_ws.protocol.channels import Since


@dataclass(frozen=True, slots=True)
class Recovered:
    """Replay ``publications`` (``(offset, frame)``, ascending), then go live."""

    publications: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class NotRecovered:
    """Send the state instead; ``reason`` is one of the module docstring's."""

    reason: str


Decision = Recovered | NotRecovered


def decide(since: Since, read: StreamRead, max_publications: int, max_bytes: int) -> Decision:
    """Whether the publications after ``since`` can all be replayed from ``read``.

    ``read`` must have been made with ``since.offset`` and a limit of ``max_publications``:
    it holds the retained publications after the client's offset (none when more were
    missing than the limit)."""
    top = read.position.offset
    # An empty epoch with offset 0 asks for "everything retained" (a first visit that wants
    # history): allowed when nothing before it was lost.
    everything = since.epoch == "" and since.offset == 0
    if (since.epoch != read.position.epoch or since.offset > top) and not everything:
        return NotRecovered("epoch")
    missing = top - since.offset
    if missing == 0:
        return Recovered(())
    if missing > max_publications:
        return NotRecovered("too_far")
    if read.first_offset > top:
        return NotRecovered("expired")
    if read.first_offset > since.offset + 1:
        return NotRecovered("trimmed")
    publications = read.publications
    if len(publications) != missing or publications[0][0] != since.offset + 1:
        # The history changed under the read (trimmed between the two), or it is not dense.
        return NotRecovered("trimmed")
    if sum(len(frame) for _, frame in publications) > max_bytes:
        return NotRecovered("too_far")
    return Recovered(publications)
