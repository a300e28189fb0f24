"""The composition root: ``Settings`` → ``Server`` (handlers, rooms, store, connections).

One ``Server`` per process serves every transport: the native one of ``captify-ws serve`` and
the ASGI app of :func:`~captify_ws.app.create_app`. While it runs it is the "current server" that
the module-level API (``captify_ws.broadcast_steps`` …) talks to — the only module-level mutable
state in captify-ws (DESIGN.md, layer 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycrdt import XmlFragment

from captify_ws import api
from captify_ws.auth import (
    ANONYMOUS,
    Access,
    Authenticator,
    Authorizer,
    NoAuth,
    Principal,
    build_authenticator,
    build_authorizer,
    choose_subprotocol,
    with_timeout,
)
from captify_ws.broker import Broker, broker_from_url
from captify_ws.channels.services import ChannelServices, build_channel_services
from captify_ws.cluster import ClusterBridge
from captify_ws.config import Settings
from captify_ws.connection import Connection, UpgradeRequest
from captify_ws.errors import (
    BrokerError,
    CaptifyError,
    CloseCode,
    Reject,
    StaleVersion,
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
from captify_ws.protocol import envelope
from captify_ws.protocol.cluster import ExternalSteps
from captify_ws.rooms.document import SERVER_ORIGIN, DocumentRoom
from captify_ws.rooms.manager import RoomManager
from captify_ws.rooms.pm_yjs import fragment_to_node, update_fragment
from captify_ws.rooms.steps import (
    Accepted,
    Behind,
    Duplicate,
    Outcome,
    StepAuthority,
    apply_steps,
    check_types,
)
from captify_ws.stateless import StatelessHub
from captify_ws.store import DocumentStore, store_from_url
from captify_ws.store.writer import StoreWriter

logger = logging.getLogger("captify_ws.server")


@dataclass(frozen=True)
class StepsResult:
    """What :meth:`Server.broadcast_steps` did."""

    version: int
    applied: bool
    duplicate: bool = False
    #: whether the document's Y.XmlFragment was changed too
    yjs: bool = False


def _steps_text(document_id: str, accepted: Accepted) -> str:
    return envelope.encode_steps(document_id, accepted.version, accepted.steps,
                                 accepted.client_ids, accepted.change_id)


def _count(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether a browser Origin matches the allowlist (``*`` and ``https://*.example.com``)."""
    origin = origin.rstrip("/").lower()
    for entry in allowed:
        pattern = entry.rstrip("/").lower()
        if pattern == "*" or fnmatch.fnmatchcase(origin, pattern):
            return True
    return False


class Server:
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
        if self.settings.pm_schema:
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
            if self.cluster is not None:
                try:
                    await self.cluster.start()
                except BaseException:
                    await self.store.close()
                    raise
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
                with contextlib.suppress(Exception):
                    await close()
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

    def admit(self, request: UpgradeRequest) -> None:
        """Refuse an upgrade before it is accepted (raise :class:`~captify_ws.errors.Reject`):
        a server shutting down, or a browser page from an origin not allowed (cross-site
        WebSocket hijacking)."""
        if self.stopping:
            raise Reject(CloseCode.GOING_AWAY, "server is shutting down")
        allowed = self.settings.allowed_origins
        if allowed:
            origin = request.header("origin")
            if origin is not None and not origin_allowed(origin, allowed):
                logger.info("refused an upgrade from origin %s", origin)
                self.stats.refused("origin")
                raise Reject(CloseCode.POLICY, "this origin is not allowed")

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

    def client_address(self, request: UpgradeRequest) -> str | None:
        """The client's address; behind a trusted proxy, from X-Forwarded-For."""
        if request.client is None:
            return None
        address = request.client[0]
        trusted = self.settings.trusted_proxies
        if address in trusted:
            forwarded = [part.strip() for part in
                         (request.header("x-forwarded-for") or "").split(",") if part.strip()]
            for hop in reversed(forwarded):
                if hop not in trusted:
                    return hop
        return address

    async def _gate(self, conn: Connection) -> None:
        """Limits and authentication, before the handler sees the connection."""
        settings = self.settings
        local = sum(len(conns) for conns in self.connections.values())
        if local > settings.max_connections:
            raise Reject(CloseCode.OVERLOADED, "server is full")
        address = self.client_address(conn.request)
        if address is not None and not _is_loopback(address):
            if self._per_address.get(address, 0) >= settings.max_connections_per_ip:
                raise Reject(CloseCode.RATE_LIMITED, "too many connections from this address")
            _count(self._per_address, address, +1)
            conn.on_closed(lambda _: _count(self._per_address, address, -1))
        try:
            principal = await with_timeout(self.authenticator.authenticate(conn.request),
                                           settings.auth_timeout_s)
        except Reject as exc:
            # A handler whose messages carry their own credentials (Hocuspocus: a token per
            # document) accepts an upgrade without any; it authenticates each document.
            if exc.code != CloseCode.UNAUTHORIZED or \
                    not getattr(conn.handler, "authenticates_messages", False):
                raise
            self.hooks.connected(conn, handler_name(conn.handler))
            return
        principal = await self.hooks.authenticate(conn, principal)
        conn.principal = principal
        user = principal.user_id
        if user is not None:
            if self._per_user.get(user, 0) >= settings.max_connections_per_user:
                raise Reject(CloseCode.RATE_LIMITED, "too many connections for this user")
            _count(self._per_user, user, +1)
            conn.on_closed(lambda _: _count(self._per_user, user, -1))
        self.webhooks.connection_event("connection.opened", conn)
        self.hooks.connected(conn, handler_name(conn.handler))

    async def authorize(self, conn: Connection, document_id: str, *,
                        principal: Principal | None = None) -> Access:
        """What ``conn`` (or ``principal``, when a document authenticated apart from its
        connection) may do with ``document_id``; raises ``Reject(4403)`` for nothing."""
        if principal is None:
            principal = conn.principal if isinstance(conn.principal, Principal) else ANONYMOUS
        revoked = self._revocation(document_id, principal.user_id)
        if revoked == "none":
            raise Reject(CloseCode.FORBIDDEN, "Access denied")
        try:
            access = await asyncio.wait_for(
                self.authorizer.authorize(principal, document_id, conn.request),
                self.settings.auth_timeout_s)
        except TimeoutError:
            raise Reject(CloseCode.AUTH_TIMEOUT, "authorization timed out") from None
        return "read" if revoked == "read" else access

    def _revocation(self, document_id: str, user_id: str | None) -> str | None:
        if user_id is None or not self._revoked:
            return None
        entry = self._revoked.get((document_id, user_id))
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._revoked[(document_id, user_id)]
            return None
        return entry[1]

    async def revoke(self, document_id: str, user_id: str, to: str = "none") -> int:
        """Take a user's access to a document away (``to="none"``: their connections close
        with 4403) or down to read-only (``to="read"``), on every instance, for
        ``revocation_ttl_s`` seconds whatever the authorizer says. Returns the connections
        changed on this instance."""
        if to not in ("none", "read"):
            raise ValueError("to must be 'none' or 'read'")
        changed = self._apply_revocation(document_id, user_id, to)
        if self.cluster is not None:
            self.cluster.publish_control({"type": "revoke", "documentId": document_id,
                                          "userId": user_id, "to": to})
        return changed

    def _apply_revocation(self, document_id: str, user_id: str, to: str) -> int:
        self._revoked[(document_id, user_id)] = (
            time.monotonic() + self.settings.revocation_ttl_s, to)
        forget = getattr(self.authorizer, "forget", None)
        if callable(forget):
            forget(document_id, user_id)
        changed = self.channel_services.revoke(document_id, user_id, to)
        room = self.rooms.get(document_id)
        if room is None:
            return changed
        for member in room.all_members():
            principal = member.principal or member.connection.principal
            if not isinstance(principal, Principal) or principal.user_id != user_id:
                continue
            changed += 1
            member.revoke("none" if to == "none" else "read")
        return changed

    def _connection_closed(self, conn: Connection) -> None:
        self.connections[handler_name(conn.handler)].discard(conn)
        self.stats.connections_closed += 1
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

    # -- documents API ---------------------------------------------------------------------

    async def apply_update(self, document_id: str, update: bytes) -> None:
        """Apply a Yjs update as the server; it is stored before this returns.

        Raises :class:`~captify_ws.errors.InvalidMessage` if Yjs cannot apply it (nothing
        changes) and :class:`~captify_ws.errors.StoreError` if the store cannot take it.
        """
        async with self.rooms.hold(document_id) as room:
            room.apply_update(update, SERVER_ORIGIN)
        await self.writer.flush()

    async def get_document(self, document_id: str) -> bytes | None:
        """The document as one Yjs update, or ``None`` if it does not exist."""
        room = self.rooms.get(document_id)
        if room is not None:
            return room.encode_state()
        stored = await self.store.load(document_id)
        return stored.as_update() if stored is not None else None

    async def list_documents(self) -> list[str]:
        """Every stored document id (what clients wrote a moment ago included)."""
        await self.writer.flush()
        return await self.store.list_documents()

    async def delete_document(self, document_id: str) -> bool:
        """Close the document's connections (1000), unload it and delete it from the store."""
        room = self.rooms.get(document_id)
        if room is not None:
            for member in room.all_members():
                member.close(CloseCode.NORMAL, "document deleted")
        await self.writer.flush()
        self.history.forget(document_id)
        await self.rooms.discard(document_id)
        return await self.store.delete_document(document_id)

    # -- broadcast API ---------------------------------------------------------------------

    async def broadcast_steps(self, document_id: str, steps: list[Any], change_id: Any,
                              version: int | None = None) -> StepsResult:
        """ProseMirror steps from server code, through the document's step authority.

        Without ``version`` the steps apply to the current document; with it, only if it is
        the current version (else :class:`~captify_ws.errors.StaleVersion`). A ``change_id``
        applied before (on any instance) is not applied again: the result says
        ``duplicate`` with the version it was applied at, whatever ``version`` says. Every
        client of the document gets
        ``{"type":"steps","data":{"version","steps","clientIDs","changeId"}}``, on every
        instance; when the document is edited through Yjs (y-prosemirror, Tiptap), the steps
        are applied to its Y.XmlFragment too. Raises
        :class:`~captify_ws.rooms.steps.StepsRefused` (nothing applied) if the steps do not
        apply (``invalid_steps``), if they or the Yjs editors' content use node or mark types
        the schema does not have (``schema_mismatch``), or past the document's quota
        (``quota_exceeded``).
        """
        async with self.rooms.hold(document_id) as room:
            authority = await self.rooms.authority(room)
            bridged = False
            async with authority.lock:
                outcome: Outcome | None = await authority.duplicate(change_id)
                if outcome is None:
                    check_types(authority.schema, steps)
                    bridged = self._bridged(room)
                    if bridged:
                        await self._fold_yjs_edits(room, authority, steps, version)
                    for _ in range(10):
                        at = authority.version if version is None else version
                        outcome = await authority.submit(at, steps, "server", change_id)
                        if not (isinstance(outcome, Behind) and version is None):
                            break
            assert outcome is not None
            if isinstance(outcome, Duplicate):
                return StepsResult(outcome.version, applied=False, duplicate=True)
            if isinstance(outcome, Behind):
                raise StaleVersion(outcome.version, authority.version)
            self.publish_steps(room, outcome)
            written = False
            if bridged:
                new_doc = authority.doc
                # Fetched again: the pycrdt document may have been rebuilt meanwhile (ydoc.py).
                fragment = self._fragment(room)
                written = room.transact(lambda: update_fragment(fragment, new_doc),
                                        SERVER_ORIGIN)
        await self.writer.flush()
        return StepsResult(outcome.version, applied=True, yjs=written)

    def _fragment(self, room: DocumentRoom) -> XmlFragment:
        fragment: XmlFragment = room.doc.get(self.settings.pm_fragment, type=XmlFragment)
        return fragment

    def _bridged(self, room: DocumentRoom) -> bool:
        """Whether the document is edited through Yjs too (its fragment has content, or
        y-websocket clients are connected)."""
        return len(self._fragment(room).children) > 0 or room.has_yjs_members

    async def _fold_yjs_edits(self, room: DocumentRoom, authority: StepAuthority,
                              steps: list[Any], version: int | None) -> None:
        """Yjs editors changed the document without steps: append one whole-document replace
        step so that the authority's document equals the Yjs one before server steps apply.

        Refuses (``schema_mismatch``, nothing appended) when the Yjs content has node types,
        marks or attributes the schema cannot represent, and (``invalid_steps``) when the
        steps would not apply to the Yjs content. Call with the authority's lock held.
        """
        fragment = self._fragment(room)
        if len(fragment.children) == 0:
            return
        yjs_doc = fragment_to_node(authority.schema, fragment)
        if yjs_doc.eq(authority.doc):
            return
        if version is None:
            apply_steps(authority.schema, yjs_doc, steps)  # a dry run: raises, appends nothing
        outcome = await authority.submit(authority.version,
                                         [authority.replace_all_step(yjs_doc)], "yjs")
        if isinstance(outcome, Accepted):
            self.publish_steps(room, outcome)

    def publish_steps(self, room: DocumentRoom, accepted: Accepted) -> None:
        """Steps the authority accepted: to every JSON client here and on other instances."""
        text = _steps_text(room.document_id, accepted)
        room.relay_json(text, None, publish=False)
        if self.cluster is not None:
            self.cluster.publish_steps(room.document_id, accepted)

    async def broadcast_steps_to_client(self, document_id: str, client_id: str,
                                        steps: list[Any], change_id: Any) -> int:
        """Send ProseMirror steps to one client (by clientID) of a document only."""
        text = envelope.encode_message("steps", document_id,
                                       {"steps": steps, "changeId": change_id})
        room = self.rooms.get(document_id)
        if room is not None:
            return room.send_to_client(client_id, text)
        if self.cluster is not None:
            self.cluster.publish_json(document_id, text, client_id)
        return 0

    async def deliver_external_steps(self, message: ExternalSteps) -> None:
        """Steps a backend published on the broker. Every instance receives the message: to
        one client, each delivers to its own clients; to everyone, each submits them to the
        step authority and the change id makes sure they are applied once."""
        if message.client_id is not None:
            room = self.rooms.get(message.document_id)
            if room is not None:
                text = envelope.encode_message("steps", message.document_id,
                                               {"steps": message.steps,
                                                "changeId": message.change_id})
                room.send_to_client(message.client_id, text, publish=False)
            return
        try:
            await self.broadcast_steps(message.document_id, message.steps, message.change_id,
                                       message.version)
        except (CaptifyError, ValueError) as exc:
            logger.warning("steps published for %r not applied: %s", message.document_id, exc)

    def apply_remote_steps(self, room: DocumentRoom, accepted: Accepted) -> None:
        """Steps another instance's authority accepted (from the broker)."""
        if room.steps is not None and not room.steps.apply_remote(accepted):
            logger.debug("document %r: step authority behind, catching up on next use",
                         room.document_id)
        room.relay_json(_steps_text(room.document_id, accepted), None, publish=False)

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
