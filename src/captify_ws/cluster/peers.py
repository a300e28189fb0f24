"""The other instances as this one sees them: who owns remote presence, what their heartbeats
said. Nothing here talks to the broker (that is :mod:`captify_ws.cluster.bridge`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from captify_ws.rooms.member import Member


@dataclass(frozen=True, slots=True)
class RemoteOwner:
    """Stands for one connection of another instance as the owner of presence states
    (compared by value: nothing is kept per remote connection)."""

    instance: str
    connection: str


def owner_key(owner: object) -> str:
    """The key of a local presence owner (a member) in cluster messages: its connection, and
    the document's address on a socket that multiplexes documents (Hocuspocus)."""
    if isinstance(owner, Member):
        return f"{owner.connection.id}\0{owner.address or ''}"
    return f"{id(owner):x}"


def is_local(owner: object) -> bool:
    return not isinstance(owner, RemoteOwner)


@dataclass
class InstanceInfo:
    """What this instance knows of another one, from its heartbeats (``<prefix>:cluster``):
    when it was last heard (``time.monotonic()`` seconds), its broker lag (seconds) and its
    connection counts per handler and per document."""

    last_seen: float
    lag: float = 0.0
    handlers: dict[str, int] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)
