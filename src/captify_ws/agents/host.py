"""What agent sessions ask of the server: :class:`AgentHost` (the ``Server`` is one).

Agents co-edit documents as the server does (rooms, the store writer, ProseMirror steps) and
keep their attribution list beside the documents; they do not need the whole ``Server``, and
owning this interface keeps ``agents/`` below the handlers (import-linter contract in
``pyproject.toml``; docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from captify_ws.broker.base import Broker
    from captify_ws.config import Settings
    from captify_ws.rooms.manager import RoomManager
    from captify_ws.rooms.steps import StepsResult
    from captify_ws.store.base import DocumentStore
    from captify_ws.store.writer import StoreWriter


class PeerInstances(Protocol):
    """The other instances as this one knows them (the cluster bridge)."""

    @property
    def broker(self) -> Broker:
        """The broker they are heard through (``error`` is set while it is away)."""

    @property
    def instances(self) -> Container[str]:
        """The ids of the instances heard from recently."""


class AgentHost(Protocol):
    """The server as agent sessions use it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def store(self) -> DocumentStore: ...

    @property
    def rooms(self) -> RoomManager: ...

    @property
    def writer(self) -> StoreWriter: ...

    @property
    def cluster(self) -> PeerInstances | None:
        """``None`` for one instance alone."""

    async def broadcast_steps(self, document_id: str, steps: list[Any], change_id: Any,
                              version: int | None = None) -> StepsResult:
        """ProseMirror steps from server code, through the document's step authority."""
