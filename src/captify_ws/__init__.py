"""captify-ws: one WebSocket server for every real-time feature of a web product.

The public API::

    from captify_ws import create_app, Settings            # the ASGI app, to run or mount
    from captify_ws import broadcast_steps, broadcast_steps_to_client, get_connection_count
    from captify_ws import Handler, Connection             # to write your own handler
    from captify_ws import publish, notify_user, is_online  # channels: pushed streams
    from captify_ws import agent_run, cancel_run            # /ws/agent run streams
    from captify_ws import Hooks, ChangeEvent …             # the life of documents, connections
"""

from __future__ import annotations

__version__ = "0.1.0"

from captify_ws.api import (
    agent_run,
    agent_session,
    apply_update,
    broadcast_stateless,
    broadcast_steps,
    broadcast_steps_to_client,
    cancel_run,
    channel_position,
    current_server,
    get_connection_count,
    get_document,
    is_online,
    notify_user,
    publish,
    request_token,
    revoke,
    send_stateless,
)
from captify_ws.app import CaptifyApp, create_app
from captify_ws.auth import Access, Authenticator, Authorizer, Principal
from captify_ws.channels.types import Position, Published
from captify_ws.config import Settings
from captify_ws.connection import Connection, PreparedFrame, UpgradeRequest
from captify_ws.errors import (
    BadRequest,
    BrokerError,
    CaptifyError,
    ChannelError,
    CloseCode,
    ConfigError,
    HistoryError,
    InvalidMessage,
    ProtocolError,
    Reject,
    RunEnded,
    ServerNotRunning,
    StoreError,
)
from captify_ws.events import (
    AuthenticateEvent,
    ChangeEvent,
    ChangeOrigin,
    ConnectEvent,
    DisconnectEvent,
    LoadEvent,
    StoreEvent,
    UnloadEvent,
)
from captify_ws.handlers.base import Handler
from captify_ws.history.api import (
    create_version,
    diff,
    get_version,
    list_versions,
    restore_version,
    version_content,
)
from captify_ws.hooks import Hooks
from captify_ws.server import Server
from captify_ws.stateless import StatelessEvent

__all__ = [
    "Access",
    "AuthenticateEvent",
    "Authenticator",
    "Authorizer",
    "BadRequest",
    "BrokerError",
    "CaptifyApp",
    "CaptifyError",
    "ChangeEvent",
    "ChangeOrigin",
    "ChannelError",
    "CloseCode",
    "ConfigError",
    "ConnectEvent",
    "Connection",
    "DisconnectEvent",
    "Handler",
    "HistoryError",
    "Hooks",
    "InvalidMessage",
    "LoadEvent",
    "Position",
    "PreparedFrame",
    "Principal",
    "ProtocolError",
    "Published",
    "Reject",
    "RunEnded",
    "Server",
    "ServerNotRunning",
    "Settings",
    "StatelessEvent",
    "StoreError",
    "StoreEvent",
    "UnloadEvent",
    "UpgradeRequest",
    "__version__",
    "agent_run",
    "agent_session",
    "apply_update",
    "broadcast_stateless",
    "broadcast_steps",
    "broadcast_steps_to_client",
    "cancel_run",
    "channel_position",
    "create_app",
    "create_version",
    "current_server",
    "diff",
    "get_connection_count",
    "get_document",
    "get_version",
    "is_online",
    "list_versions",
    "notify_user",
    "publish",
    "request_token",
    "restore_version",
    "revoke",
    "send_stateless",
    "version_content",
]
