"""The composition root: ``Settings`` → ``Server`` (handlers, rooms, store, connections).

One ``Server`` per process serves every transport: the native one of ``captify-ws serve`` and
the ASGI app of :func:`~captify_ws.app.create_app`. While it runs it is the "current server" that
the module-level API (``captify_ws.broadcast_steps`` …) talks to — the only module-level mutable
state in captify-ws (DESIGN.md, layer 8).

This module composes; the server's own behaviour lives beside it, each part in its module:
access control (``access.py``: origins, limits, authentication, authorization, revocation) and
the documents and steps service (``documents.py``). ``Server`` is assembled from them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from captify_ws import api
from captify_ws.access import AccessControl
from captify_ws.auth import (
    Authenticator,
    Authorizer,
    NoAuth,
    build_authenticator,
    choose_subprotocol,
)
from captify_ws.authorizers import build_authorizer
from captify_ws.broker import Broker, broker_from_url
from captify_ws.channels.services import ChannelServices, build_channel_services
from captify_ws.cluster.bridge import ClusterBridge
from captify_ws.config import Settings
from captify_ws.connection import Connection, UpgradeRequest
from captify_ws.documents import DocumentService
from captify_ws.errors import (
    BrokerError,
    CloseCode,
    StoreError,
    log_with_id,
)
from captify_ws.handlers import BUILTIN_HANDLERS
from captify_ws.handlers.agent import AgentHandler
from captify_ws.handlers.base import (
    Handler,
    HandlerFactory,
    HandlerRegistry,
    handler_name,
    load_handler,
)
from captify_ws.history.versions import DocumentHistory
from captify_ws.history.webhooks import WebhookSender
from captify_ws.hooks import HookRunner, load_hook
from captify_ws.imports import import_attribute
from captify_ws.metrics import Stats
from captify_ws.outbound import connection_limits
from captify_ws.rooms.manager import RoomManager
from captify_ws.rooms.tiptap_schema import NAME as TIPTAP
from captify_ws.rooms.tiptap_schema import tiptap_schema
from captify_ws.stateless import StatelessHub
from captify_ws.store import DocumentStore, store_from_url
from captify_ws.store.writer import StoreWriter

logger = logging.getLogger("captify_ws.server")


class Server(AccessControl, DocumentService):
    """Everything one captify-ws process runs. Start with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, settings: Settings | None = None, *,
                 handlers: Iterable[Handler | HandlerFactory] = (),
                 store: DocumentStore | None = None, broker: Broker | None = None,
                 authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None, hooks: Iterable[object] = ()) -> None:
        self.settings = settings or Settings()
        #: the hooks (``hooks.py``): those of ``--hooks``, then those passed here
        self.hooks = HookRunner(
            [*(load_hook(spec) for spec in self.settings.hooks), *hooks],
            change_debounce_s=self.settings.hook_change_debounce_ms / 1000,
            change_max_wait_s=self.settings.hook_change_max_wait_ms / 1000)
        self.authenticator = authenticator or build_authenticator(self.settings)
        self.authorizer = authorizer or build_authorizer(self.settings)
        self.stats = Stats()
        self.connection_limits = connection_limits(self.settings, self.stats)
        self._per_user: dict[str, int] = {}
        self._per_address: dict[str, int] = {}
        #: (document_id, user_id) → (expires at, "none" | "read")
        self._revoked: dict[tuple[str, str], tuple[float, str]] = {}
        self.instance_id = secrets.token_hex(6)
        self.store = store if store is not None else store_from_url(self.settings.store,
                                                                    self.settings)
        # With the default in-process broker there is nobody to talk to: no cluster bridge.
        # A broker passed in (tests sharing a MemoryHub) or configured (redis) gets one.
        if broker is None and self.settings.broker != "memory":
            broker = broker_from_url(self.settings.broker, self.settings)
        self.broker = broker
        self.writer = StoreWriter(
            self.store, commit_interval_s=self.settings.store_commit_interval_ms / 1000,
            on_commit=lambda count, seconds: self.stats.store_writes.observe(seconds))
        schema = None
        if self.settings.pm_schema == TIPTAP:
            schema = tiptap_schema()
        elif self.settings.pm_schema:
            schema = import_attribute(self.settings.pm_schema, "pm_schema")
        self.rooms = RoomManager(self.store, self.writer, self.settings, schema,
                                 stats=self.stats)
        if self.hooks.active:
            self.rooms.on_load.append(self.hooks.room_loaded)
            self.rooms.on_unload.append(self.hooks.room_unloaded)
            if self.hooks.wants("on_store"):
                self.writer.on_stored = self.hooks.stored
        self.cluster = ClusterBridge(self, broker) if broker is not None else None
        #: versions (automatic, named, restore) of the documents, when the store keeps history
        self.history = DocumentHistory(self)
        #: webhooks to the URLs in settings (history/webhooks.py)
        self.webhooks = WebhookSender(self)
        #: channels (/ws/notifications, /ws/workflow): what their handlers may use
        self.channel_services: ChannelServices = build_channel_services(
            self.settings, self.authorize, self.instance_id)
        #: Hocuspocus stateless messages: the hooks, broadcast_stateless and send_stateless
        self.stateless = StatelessHub(self, self.hooks.stateless_methods())
        self.registry = HandlerRegistry()
        for factory in BUILTIN_HANDLERS:
            self.registry.add(factory(self))
        self.registry.add(AgentHandler(self))
        for spec in self.settings.handlers:
            self.registry.add(load_handler(spec, self))
        for extra in handlers:
            self.registry.add(extra if hasattr(extra, "path") else extra(self))  # type: ignore[arg-type]
        self.connections: dict[str, set[Connection]] = {
            handler_name(handler): set() for handler in self.registry}
        self.started = False
        self.stopping = False
        self._start_lock = asyncio.Lock()
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._keepalive_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start background work; idempotent."""
        async with self._start_lock:
            if self.started:
                return
            await self.store.open()
            try:
                await self.load_revocations()
            except BaseException:
                await self.store.close()
                raise
            if self.cluster is not None:
                try:
                    await self.cluster.start()
                except BaseException:
                    await self.store.close()
                    raise
                await self.load_broker_revocations()
            self.writer.start()
            self.history.start()
            self.webhooks.start()
            try:
                await self.channel_services.start()
            except BaseException:
                await self.writer.stop(timeout=1.0)
                if self.cluster is not None:
                    await self.cluster.stop()
                await self.store.close()
                raise
            self.hooks.start()
            if self.settings.ping_interval_s > 0:
                self._keepalive_task = asyncio.get_running_loop().create_task(
                    self._keepalive(), name="captify-keepalive")
            self.started = True
            api.set_current_server(self)
            if isinstance(self.authenticator, NoAuth):
                # No address here: mounted in another app, the port is that server's.
                logger.warning("authentication is off (--auth none): anyone who can reach this "
                               "server may read and write every document")
            logger.info("captify-ws %s started: handlers %s, store %s", self.instance_id,
                        ", ".join(handler.path for handler in self.registry), self.store.url)

    async def stop(self, *, code: int = CloseCode.RESTART, reason: str = "server restarting",
                   timeout: float = 10.0) -> None:
        """Close every connection with ``code``, write what is pending, close the store."""
        if not self.started or self.stopping:
            return
        self.stopping = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        everyone = [conn for conns in self.connections.values() for conn in conns]
        for conn in everyone:
            conn.close(code, reason)
        try:
            await asyncio.wait_for(self._no_connections.wait(), timeout / 2)
        except TimeoutError:
            stuck = [conn for conns in self.connections.values() for conn in conns]
            logger.warning("%d connections did not close in time; dropping them", len(stuck))
            for conn in stuck:
                conn.abort(code, reason)
            await asyncio.sleep(0.05)
        await self.rooms.close()
        await self.history.stop()
        await self.webhooks.stop()
        await self.channel_services.stop()
        await self.writer.stop(timeout=timeout / 2)
        await self.hooks.stop(timeout=timeout / 4)
        if self.cluster is not None:
            await self.cluster.stop()
        await self.store.close()
        for hook in (self.authenticator, self.authorizer):
            close = getattr(hook, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:  # user code: stopping goes on
                    log_with_id(logger, f"closing {type(hook).__name__} failed", exc,
                                level=logging.WARNING)
        self.started = False
        self.stopping = False
        api.clear_current_server(self)
        logger.info("captify-ws %s stopped", self.instance_id)

    async def _keepalive(self) -> None:
        """Every ping interval: ping silent connections, close those that stayed silent.

        One timer for all connections (a task per connection costs about 1 KB each). A dead
        peer is closed between one and two intervals after it went silent.
        """
        while True:
            await asyncio.sleep(self.settings.ping_interval_s)
            for conns in self.connections.values():
                for conn in list(conns):
                    conn.keepalive()

    async def readiness(self) -> list[str]:
        """Why this instance cannot serve right now; empty when it can."""
        reasons: list[str] = []
        if not self.started or self.stopping:
            reasons.append("server is not running" if not self.started else "shutting down")
            return reasons
        # /readyz is public: reasons are generic, their detail (URLs, SQL, paths) is logged
        # under the error id they carry.
        try:
            await asyncio.wait_for(self.store.check(), 3.0)
        except (StoreError, TimeoutError) as exc:
            error_id = log_with_id(logger, "store check failed",
                                   exc if str(exc) else TimeoutError("no answer within 3 s"),
                                   level=logging.WARNING, traceback=False)
            reasons.append(f"store unavailable (error id {error_id})")
        if self.writer.error is not None:
            error_id = log_with_id(logger, "store writes failing", self.writer.error,
                                   level=logging.WARNING, traceback=False)
            reasons.append(f"store writes failing, {self.writer.pending} pending "
                           f"(error id {error_id})")
        channels = self.channel_services
        try:
            await asyncio.wait_for(channels.store.check(), 3.0)
        except (StoreError, TimeoutError) as exc:
            error_id = log_with_id(logger, "channel store check failed",
                                   exc if str(exc) else TimeoutError("no answer within 3 s"),
                                   level=logging.WARNING, traceback=False)
            reasons.append(f"channel tables unavailable (error id {error_id})")
        if self.broker is not None:
            try:
                await self.broker.check()
            except BrokerError as exc:
                error_id = log_with_id(logger, "broker check failed", exc,
                                       level=logging.WARNING, traceback=False)
                reasons.append(f"broker unavailable (error id {error_id})")
        return reasons

    # -- connections -----------------------------------------------------------------------

    def route(self, path: str) -> tuple[Handler, str] | None:
        """The handler for a WebSocket path and the rest of the path, or ``None`` (→ 404)."""
        return self.registry.resolve(path)

    def subprotocol_for(self, request: UpgradeRequest) -> str | None:
        """The ``Sec-WebSocket-Protocol`` to accept, when the client offered some."""
        return choose_subprotocol(request)

    def open_connection(self, conn: Connection) -> None:
        """A transport accepted ``conn``: track it, authenticate it, run ``on_connect``."""
        self.connections[handler_name(conn.handler)].add(conn)
        self._no_connections.clear()
        self.stats.connections_opened += 1
        conn.on_closed(self._connection_closed)
        conn.opened(self._gate)

    def _connection_closed(self, conn: Connection) -> None:
        self.connections[handler_name(conn.handler)].discard(conn)
        self.webhooks.connection_event("connection.closed", conn)
        logger.debug("closed %s %s code=%s", conn.id, conn.request.path, conn.close_code,
                     extra={"connection": conn.id, "path": conn.request.path,
                            "close_code": conn.close_code})
        if not any(self.connections.values()):
            self._no_connections.set()

    # -- counts ----------------------------------------------------------------------------

    def document_connection_count(self, document_id: str) -> int:
        """Connections on a document, on every instance of the cluster."""
        room = self.rooms.get(document_id)
        local = len(room) if room is not None else 0
        if self.cluster is None:
            return local
        return local + self.cluster.remote_document_count(document_id)

    def handler_connection_count(self, name: str) -> int:
        """Connections of a handler, on every instance of the cluster."""
        local = len(self.connections.get(name, ()))
        if self.cluster is None:
            return local
        return local + self.cluster.remote_handler_count(name)

    def get_connection_count(self, key: str | None = None, *, document_id: str | None = None,
                             handler: str | None = None) -> int:
        """Connections of a document, or of a handler.

        ``get_connection_count("fabric")`` counts a handler's connections when ``key`` names a
        handler, else the connections on the document ``key``. Pass ``document_id=`` or
        ``handler=`` to say which.
        """
        if handler is not None:
            return self.handler_connection_count(handler)
        if document_id is not None:
            return self.document_connection_count(document_id)
        if key is None:
            return sum(self.handler_connection_count(name) for name in self.connections)
        if key in self.connections:
            return self.handler_connection_count(key)
        return self.document_connection_count(key)

    def request_token(self, document_id: str, user_id: str | None = None) -> int:
        """Ask the Hocuspocus providers of a document (of one user, or all) for a fresh token,
        on every instance; each answer is authenticated and authorized again. Returns the
        providers asked here."""
        if self.cluster is not None:
            self.cluster.publish_control({"type": "token-request", "documentId": document_id,
                                          "userId": user_id})
        return self._request_token(document_id, user_id)

    def _request_token(self, document_id: str, user_id: str | None) -> int:
        room = self.rooms.get(document_id)
        handler = self.registry.by_name("hocuspocus")
        ask = getattr(handler, "request_token", None)
        return ask(room, user_id) if room is not None and ask is not None else 0

    def on_cluster_control(self, body: dict[str, Any]) -> None:
        """A control message from another instance (see ``cluster.py``)."""
        if body.get("type") == "token-request":
            document_id, user_id = body.get("documentId"), body.get("userId")
            if isinstance(document_id, str) and (user_id is None or isinstance(user_id, str)):
                self._request_token(document_id, user_id)
            return
        if body.get("type") == "revoke":
            document_id, user_id, to = body.get("documentId"), body.get("userId"), body.get("to")
            if isinstance(document_id, str) and isinstance(user_id, str) and \
                    to in ("none", "read"):
                self._apply_revocation(document_id, user_id, to)
            return
        logger.debug("ignored cluster control message %r", body.get("type"))
