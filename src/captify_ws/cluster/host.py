"""What the cluster bridge needs of the server of its instance: :class:`ClusterHost`.

The bridge owns this interface, so that it never imports the server (the layers contract in
pyproject.toml: the server is above the cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from captify_ws.config import Settings
    from captify_ws.connection import Connection
    from captify_ws.protocol.cluster import ExternalSteps
    from captify_ws.rooms.document import DocumentRoom
    from captify_ws.rooms.manager import RoomManager
    from captify_ws.rooms.steps import Accepted
    from captify_ws.stateless import StatelessHub


class ClusterHost(Protocol):
    """What the cluster bridge reads of, and calls back on, the server of its instance (the
    ``Server`` is one; the bridge owns this interface and never imports the server)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def rooms(self) -> RoomManager: ...

    @property
    def connections(self) -> dict[str, set[Connection]]: ...

    @property
    def stateless(self) -> StatelessHub: ...

    async def deliver_external_steps(self, message: ExternalSteps) -> None:
        """Steps a backend published on the broker (every instance receives them)."""
        ...

    def apply_remote_steps(self, room: DocumentRoom, accepted: Accepted) -> None:
        """Steps another instance's authority accepted."""
        ...

    def on_cluster_control(self, body: dict[str, Any]) -> None:
        """A control message from another instance (token request, revocation)."""
        ...
