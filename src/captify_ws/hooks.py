"""Hooks: one typed interface for the life of documents and connections.

Webhooks, history, agents and your own code plug in here. A hook is an object with any of
these methods (plain or ``async``), each taking one event object (``events.py``)::

    on_load(LoadEvent)            a document was loaded into this instance
    on_change(ChangeEvent)        it changed (debounced, with the origins of the changes)
    on_store(StoreEvent)          its updates were committed to the store
    on_unload(UnloadEvent)        it left memory
    on_authenticate(AuthenticateEvent) -> Principal | None
                                  a connection (or a Hocuspocus document) authenticated:
                                  raise Reject to refuse, return a Principal to replace it
    on_connect(ConnectEvent)      a connection was accepted and goes to its handler
    on_disconnect(DisconnectEvent) it closed
    on_stateless(StatelessEvent)  a Hocuspocus provider sent a stateless message

Subclass :class:`Hooks` (every method a no-op) and override what you need, or write any object
or module-level instance with some of the methods. Name it with ``--hooks module:attribute``
(``CAPTIFY_WS_HOOKS``, comma-separated: several hooks run in the order named), or pass
``Server(hooks=[…])``. A class is instantiated without arguments.

Guarantees (Hocuspocus's extension hooks and Centrifuge's event handlers are the models):

* Events of one instance reach the hooks in the order they happened, one hook call at a time;
  ``on_load`` comes before the document's changes and ``on_unload`` after them (a pending
  debounced change is delivered first). A slow hook delays the next events, never a client:
  hand long work (HTTP calls) to a task of your own.
* A hook that raises is logged with an error id and the next hook still runs; the room, the
  connection and the other hooks go on (``on_authenticate`` is the exception: ``Reject`` refuses
  the connection with its code, any other error refuses it with 1011 and the error id).
* At most ``MAX_QUEUED`` events wait for the hooks; past that, events are dropped and logged
  (a hook that never returns cannot take the server's memory with it).
* Nothing is delivered across instances: each instance reports what happens in it (a change
  accepted elsewhere arrives with a ``"broker"`` origin). Events still queued at shutdown are
  delivered within the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from pycrdt import merge_updates

from captify_ws.errors import CloseCode, ConfigError, Reject, log_with_id
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
from captify_ws.imports import import_attribute

if TYPE_CHECKING:
    from captify_ws.auth import Principal
    from captify_ws.connection import Connection
    from captify_ws.rooms.document import DocumentRoom
    from captify_ws.rooms.member import Origin
    from captify_ws.stateless import StatelessEvent

logger = logging.getLogger("captify_ws.hooks")

#: the methods a hook may have; an ``on_…`` attribute outside this list is a ConfigError (typo)
HOOK_METHODS: Final = ("on_load", "on_change", "on_store", "on_unload", "on_authenticate",
                       "on_connect", "on_disconnect", "on_stateless")

#: events waiting for the hooks, at most
MAX_QUEUED: Final = 10_000


class Hooks:
    """Every hook method, doing nothing: subclass and override the ones you need."""

    async def on_load(self, event: LoadEvent) -> None:
        """A document was loaded into this instance."""

    async def on_change(self, event: ChangeEvent) -> None:
        """A document changed (debounced; ``event.origins`` says who changed it)."""

    async def on_store(self, event: StoreEvent) -> None:
        """A document's updates were committed to the store."""

    async def on_unload(self, event: UnloadEvent) -> None:
        """A document left this instance's memory."""

    async def on_authenticate(self, event: AuthenticateEvent) -> Principal | None:
        """Refuse with ``Reject``, or return a Principal to use instead of ``event.principal``."""
        return None

    async def on_connect(self, event: ConnectEvent) -> None:
        """A connection was accepted."""

    async def on_disconnect(self, event: DisconnectEvent) -> None:
        """A connection closed."""

    async def on_stateless(self, event: StatelessEvent) -> None:
        """A Hocuspocus provider sent a stateless message (``event.reply`` answers it)."""


Method = Callable[[Any], Any]


def load_hook(spec: str) -> object:
    """The hook ``module:attribute`` names (a class is instantiated without arguments);
    :class:`ConfigError` if it cannot be imported or has no hook method, or an ``on_…``
    attribute that is not one (a typo would otherwise never be called)."""
    target = import_attribute(spec, "hook")
    if inspect.isclass(target):
        target = target()
    check_hook(target, spec)
    return target


def check_hook(hook: object, name: str) -> None:
    """Raise :class:`ConfigError` unless ``hook`` has a hook method and no unknown ``on_…``."""
    unknown = sorted(attr for attr in dir(hook)
                     if attr.startswith("on_") and attr not in HOOK_METHODS)
    if unknown:
        raise ConfigError(f"hook {name}: unknown method(s) {', '.join(unknown)} (hook methods: "
                          f"{', '.join(HOOK_METHODS)})")
    if not any(callable(getattr(hook, method, None)) for method in HOOK_METHODS):
        raise ConfigError(f"hook {name}: none of {', '.join(HOOK_METHODS)}")


def _overridden(hook: object, method: str) -> Method | None:
    """The hook's bound method, unless it is the do-nothing one of :class:`Hooks`."""
    bound = getattr(hook, method, None)
    if not callable(bound):
        return None
    if getattr(type(hook), method, None) is getattr(Hooks, method):
        return None
    return bound  # type: ignore[no-any-return]


async def _call(method: Method, event: object) -> Any:
    result = method(event)
    if inspect.isawaitable(result):
        result = await result
    return result


class _PendingChange:
    """Changes of one document waiting for the debounce timer."""

    __slots__ = ("first_at", "origins", "timer", "updates")

    def __init__(self, first_at: float) -> None:
        self.first_at = first_at
        self.updates: list[bytes] = []
        self.origins: dict[ChangeOrigin, None] = {}
        self.timer: asyncio.TimerHandle | None = None


def change_origin(origin: Origin) -> ChangeOrigin:
    """The hook's view of a room's :class:`~captify_ws.rooms.member.Origin`."""
    if origin.kind == "member" and origin.member is not None:
        member = origin.member
        principal = member.principal or member.connection.principal
        return ChangeOrigin("connection", connection_id=member.connection.id,
                            user_id=getattr(principal, "user_id", None))
    if origin.kind == "broker":
        return ChangeOrigin("broker", instance=origin.instance)
    return ChangeOrigin("server", label=origin.label or "server")


class HookRunner:
    """Delivers events to the hooks of one server. See the module docstring."""

    def __init__(self, hooks: Iterable[object] = (), *, change_debounce_s: float = 1.0,
                 change_max_wait_s: float = 10.0) -> None:
        self.hooks = list(hooks)
        for index, hook in enumerate(self.hooks):
            check_hook(hook, f"#{index + 1} ({type(hook).__name__})")
        self._methods: dict[str, list[Method]] = {
            name: [m for m in (_overridden(hook, name) for hook in self.hooks) if m is not None]
            for name in HOOK_METHODS}
        self._debounce_s = change_debounce_s
        self._max_wait_s = change_max_wait_s
        self._changes: dict[str, _PendingChange] = {}
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue(MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def wants(self, method: str) -> bool:
        """Whether any hook has ``method`` (callers skip building events nobody reads)."""
        return bool(self._methods[method])

    @property
    def active(self) -> bool:
        return any(self._methods.values())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.active:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="captify-hooks")

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver pending changes and queued events (up to ``timeout`` s), then stop."""
        for document_id in list(self._changes):
            self._flush_change(document_id)
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            logger.warning("hooks: %d events not delivered at shutdown", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            method, event = await self._queue.get()
            try:
                for call in self._methods[method]:
                    try:
                        await _call(call, event)
                    except Exception as exc:
                        about = getattr(event, "document_id", None) or \
                            getattr(event, "connection_id", "?")
                        log_with_id(logger, f"hook {method} failed ({type(event).__name__} "
                                    f"of {about!r})", exc)
            finally:
                self._queue.task_done()

    def _emit(self, method: str, event: object) -> None:
        if not self._methods[method]:
            return
        try:
            self._queue.put_nowait((method, event))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log_with_id(logger, "hooks: events dropped", f"{self.dropped} dropped, "
                            f"{MAX_QUEUED} waiting (a hook is too slow)", traceback=False)

    # -- documents -------------------------------------------------------------------------

    def room_loaded(self, room: DocumentRoom) -> None:
        """A room loaded: ``on_load``, and listen to its changes if any hook wants them."""
        size = room.stored_size
        self._emit("on_load", LoadEvent(room.document_id, size is None, size or 0))
        if self._methods["on_change"]:
            room.add_update_listener(self._changed)

    def room_unloaded(self, room: DocumentRoom) -> None:
        """A room unloaded: its pending ``on_change``, then ``on_unload``."""
        self._flush_change(room.document_id)
        self._emit("on_unload", UnloadEvent(room.document_id, room.deleted))

    def stored(self, document_id: str, updates: int, size: int) -> None:
        """The store writer committed ``updates`` of a document (``size`` bytes)."""
        self._emit("on_store", StoreEvent(document_id, updates, size))

    def _changed(self, room: DocumentRoom, update: bytes, origin: Origin) -> None:
        """An update listener: the hot path pays a list append and a timer per window."""
        document_id = room.document_id
        loop = asyncio.get_running_loop()
        pending = self._changes.get(document_id)
        if pending is None:
            pending = self._changes[document_id] = _PendingChange(loop.time())
        pending.updates.append(update)
        pending.origins[change_origin(origin)] = None
        if pending.timer is not None:
            pending.timer.cancel()
        delay = min(self._debounce_s, pending.first_at + self._max_wait_s - loop.time())
        pending.timer = loop.call_later(max(delay, 0.0), self._flush_change, document_id)

    def _flush_change(self, document_id: str) -> None:
        pending = self._changes.pop(document_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        updates = pending.updates
        update = updates[0] if len(updates) == 1 else merge_updates(*updates)
        self._emit("on_change", ChangeEvent(document_id, update, tuple(pending.origins),
                                            len(updates)))

    # -- connections -----------------------------------------------------------------------

    async def authenticate(self, conn: Connection, principal: Principal,
                           document_id: str | None = None) -> Principal:
        """Run ``on_authenticate`` now, in order; the principal to use. Raises ``Reject``."""
        methods = self._methods["on_authenticate"]
        if not methods:
            return principal
        for method in methods:
            event = AuthenticateEvent(conn.id, conn.request, principal, document_id)
            try:
                replaced = await _call(method, event)
            except Reject:
                raise
            except Exception as exc:
                error_id = log_with_id(logger, f"hook on_authenticate failed on {conn.id}", exc)
                raise Reject(CloseCode.INTERNAL_ERROR, f"error id {error_id}") from None
            if replaced is not None:
                principal = replaced
        return principal

    def connected(self, conn: Connection, handler: str) -> None:
        """``on_connect`` now, ``on_disconnect`` when the connection closes."""
        if not (self._methods["on_connect"] or self._methods["on_disconnect"]):
            return
        user_id = getattr(conn.principal, "user_id", None)
        path = conn.request.path
        self._emit("on_connect", ConnectEvent(conn.id, handler, path, user_id, conn))
        conn.on_closed(lambda closed: self._emit("on_disconnect", DisconnectEvent(
            closed.id, handler, path, user_id, closed.close_code)))

    def stateless_methods(self) -> list[Callable[[StatelessEvent], Awaitable[None] | None]]:
        """The hooks' ``on_stateless`` methods (the stateless hub calls them in order)."""
        return list(self._methods["on_stateless"])
