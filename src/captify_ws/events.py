"""The event objects of the hook interface (``hooks.py``): one frozen dataclass per moment in
the life of a document or a connection. Each says what happened and who made it happen; none
holds the room, so a hook cannot keep a document alive or change it behind the room's back.

Sequence per document on one instance: ``LoadEvent``, then any number of ``ChangeEvent`` and
``StoreEvent`` (each in its own rhythm: changes are debounced, commits grouped), then
``UnloadEvent``.
Per connection: ``AuthenticateEvent`` (may refuse), ``ConnectEvent``, ``DisconnectEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from captify_ws.auth import Principal
    from captify_ws.connection import Connection, UpgradeRequest


@dataclass(frozen=True, slots=True)
class LoadEvent:
    """A document was loaded into this instance (first member, or an API call).

    ``new``: the store had nothing for it (it is being created); ``size``: bytes of the
    stored state that was loaded (0 when new).
    """

    document_id: str
    new: bool
    size: int


@dataclass(frozen=True, slots=True)
class ChangeOrigin:
    """Who made a change: ``kind`` ``"connection"`` (a client here: ``connection_id``,
    ``user_id`` when authenticated), ``"server"`` (the server API, ``label`` naming who it
    acted for) or ``"broker"`` (another instance: ``instance`` is its id)."""

    kind: Literal["connection", "server", "broker"]
    connection_id: str | None = None
    user_id: str | None = None
    label: str | None = None
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A document changed. Debounced: one event for every change made within
    ``hook_change_debounce_ms`` of the previous one (at most ``hook_change_max_wait_ms`` after
    the first), on this instance.

    ``update`` is one Yjs update holding every change of the window (apply it to a copy of the
    document before the window to get the document after it); ``origins`` are the distinct
    origins of those changes, in the order they first appeared; ``count`` how many updates went
    in. A change another instance accepted has a ``"broker"`` origin: a hook that acts once per
    change across a cluster ignores those (the accepting instance reports them).
    """

    document_id: str
    update: bytes
    origins: tuple[ChangeOrigin, ...]
    count: int

    @property
    def local(self) -> bool:
        """Whether any change of the window was accepted by this instance."""
        return any(origin.kind != "broker" for origin in self.origins)


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """Updates of a document were committed to the store (``updates`` of them, ``size`` bytes).
    What was stored survives ``kill -9`` (the store's guarantee)."""

    document_id: str
    updates: int
    size: int


@dataclass(frozen=True, slots=True)
class UnloadEvent:
    """A document left this instance's memory: no member for ``room_grace_s`` and everything it
    accepted is stored (or the document was deleted, ``deleted``; or the server stopped)."""

    document_id: str
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AuthenticateEvent:
    """The authenticator accepted ``principal`` for a connection (``document_id`` set when a
    Hocuspocus document authenticates apart from its socket).

    A hook refuses by raising :class:`~captify_ws.errors.Reject` (``Reject(4403, "…")``), and may
    return another :class:`~captify_ws.auth.Principal` to use instead (e.g. with claims looked
    up in the product's database); returning ``None`` keeps ``principal``.
    """

    connection_id: str
    request: UpgradeRequest
    principal: Principal
    document_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectEvent:
    """A connection passed the limits and authentication and goes to its handler.

    ``handler`` is the handler's name (``fabric``, ``hocuspocus``…); ``user_id`` ``None`` when
    anonymous; ``connection`` the socket (``connection.request`` for the path, headers…)."""

    connection_id: str
    handler: str
    path: str
    user_id: str | None
    connection: Connection


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A connection that had a :class:`ConnectEvent` closed, with ``close_code`` (``None``:
    the transport dropped without a close frame)."""

    connection_id: str
    handler: str
    path: str
    user_id: str | None
    close_code: int | None
