"""The ``Handler`` protocol and the registry that routes a WebSocket path to its handler.

A handler serves one path prefix, such as ``/ws/fabric``: a connection to ``/ws/fabric`` or to
``/ws/fabric/anything`` reaches it (the rest of the path is ``conn.subpath``). Each method may be
a plain function or a coroutine function:

* ``on_connect(conn)`` runs once the WebSocket is accepted; messages that arrive before it
  finishes wait, in order. Raising closes the connection with the error's close code
  (:class:`~captify_ws.errors.Reject` or :class:`~captify_ws.errors.ProtocolError`), or 1011.
* ``on_message(conn, message)`` gets each message, ``str`` for text frames and ``bytes`` for
  binary ones, one at a time and in order per connection.
* ``on_close(conn, code)`` runs once, after the last message, with the close code.
* ``on_error(conn, error)`` is told about an exception raised by the others, before the close.
* optional: ``screen(conn, payload, text) -> bool`` sees a large message (256 KiB or more,
  native transport) as a ``memoryview`` of its raw bytes before it is copied or decoded, and
  answers ``True`` when it refused it (and told the peer): the message is then not delivered;
  raising closes the connection as ``on_message`` raising does.

A user's handler is an object with these attributes (a module-level instance, as in the seed),
or a callable that takes the server (what a handler may ask of it is :class:`HandlerContext`)
and returns one; either is named by an import path in
``CAPTIFY_WS_HANDLERS=myapp.realtime:my_feature_handler``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from captify_ws.errors import ConfigError
from captify_ws.imports import import_attribute
from captify_ws.receiving import ConnectionHandler

if TYPE_CHECKING:
    from captify_ws.auth import Access, Authenticator, Principal
    from captify_ws.channels.services import ChannelServices
    from captify_ws.config import Settings
    from captify_ws.connection import Connection
    from captify_ws.hooks import HookRunner
    from captify_ws.metrics import Stats
    from captify_ws.rooms.document import DocumentRoom
    from captify_ws.rooms.manager import RoomManager
    from captify_ws.rooms.steps import Accepted
    from captify_ws.stateless import StatelessHub

MaybeAwaitable = Awaitable[None] | None


@runtime_checkable
class Handler(ConnectionHandler, Protocol):
    """One real-time feature, served on one path. See the module docstring. (The methods are
    those of ``connection.ConnectionHandler``: the connection layer owns what it calls.)"""

    path: str

    def on_connect(self, conn: Connection) -> MaybeAwaitable: ...

    def on_message(self, conn: Connection, message: str | bytes) -> MaybeAwaitable: ...

    def on_close(self, conn: Connection, code: int) -> MaybeAwaitable: ...

    def on_error(self, conn: Connection, error: Exception) -> MaybeAwaitable: ...


class HandlerContext(Protocol):
    """What a handler may ask of the server that runs it (the ``Server`` is one; the handlers
    layer owns this interface, so that it never imports the composition root)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def rooms(self) -> RoomManager: ...

    @property
    def connections(self) -> dict[str, set[Connection]]: ...

    @property
    def hooks(self) -> HookRunner: ...

    @property
    def stateless(self) -> StatelessHub: ...

    @property
    def channel_services(self) -> ChannelServices: ...

    @property
    def authenticator(self) -> Authenticator: ...

    async def authorize(self, conn: Connection, document_id: str, *,
                        principal: Principal | None = None) -> Access:
        """What ``conn`` may do with ``document_id``; raises ``Reject(4403)`` for nothing."""
        ...

    def document_connection_count(self, document_id: str) -> int:
        """Connections on a document, on every instance."""
        ...

    def creator_of(self, conn: Connection) -> str:
        """Who is charged for the documents ``conn`` creates (its user, or its address)."""
        ...

    def publish_steps(self, room: DocumentRoom, accepted: Accepted) -> None:
        """Steps the authority accepted: to every JSON client here and on other instances."""
        ...


HandlerFactory = Callable[[HandlerContext], Handler]


def handler_name(handler: Handler) -> str:
    """``fabric`` for ``/ws/fabric``: the name used by ``get_connection_count("fabric")``."""
    name = getattr(handler, "name", None)
    if isinstance(name, str) and name:
        return name
    return handler.path.rstrip("/").rsplit("/", 1)[-1]


def _check(handler: object, origin: str) -> Handler:
    missing = [attr for attr in ("path", "on_connect", "on_message", "on_close", "on_error")
               if not hasattr(handler, attr)]
    if missing:
        raise ConfigError(f"handler {origin} lacks {', '.join(missing)}")
    path = handler.path  # type: ignore[attr-defined]
    if not isinstance(path, str) or not path.startswith("/") or path.endswith("/") \
            or "?" in path or len(path) < 2:
        raise ConfigError(f"handler {origin} has path {path!r}; expected e.g. '/ws/my-feature'")
    return handler  # type: ignore[return-value]


def load_handler(spec: str, server: HandlerContext) -> Handler:
    """Import ``module:attribute`` and return the handler it names (calling it if a factory)."""
    target = import_attribute(spec, "handler")
    if isinstance(target, type) or (not hasattr(target, "path") and callable(target)):
        # The signature says whether it takes the server; a TypeError raised inside the
        # factory is its own error, reported as such (never a reason to call it again).
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            signature = None
        args: tuple[Any, ...] = (server,)
        if signature is not None:
            try:
                signature.bind(server)
            except TypeError:
                try:
                    signature.bind()
                except TypeError:
                    raise ConfigError(f"handler {spec!r}: a factory takes the server as its "
                                      "one argument, or nothing") from None
                args = ()
        try:
            target = target(*args)
        except Exception as exc:
            raise ConfigError(f"handler {spec!r}: could not create it: {exc}") from None
    return _check(target, repr(spec))


class HandlerRegistry:
    """Handlers by path; finds the handler for a request path (longest prefix wins)."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._by_path: dict[str, Handler] = {}
        for handler in handlers:
            self.add(handler)

    def add(self, handler: Handler) -> None:
        handler = _check(handler, repr(getattr(handler, "path", handler)))
        if handler.path in self._by_path:
            raise ConfigError(f"two handlers for {handler.path}")
        names = {handler_name(existing) for existing in self._by_path.values()}
        if handler_name(handler) in names:
            raise ConfigError(f"two handlers named {handler_name(handler)!r}")
        self._by_path[handler.path] = handler
        # longest paths first, so /ws/a/b wins over /ws/a
        self._by_path = dict(sorted(self._by_path.items(), key=lambda kv: -len(kv[0])))

    def __iter__(self) -> Any:
        return iter(self._by_path.values())

    def __len__(self) -> int:
        return len(self._by_path)

    def resolve(self, path: str) -> tuple[Handler, str] | None:
        """``(handler, subpath)`` for a request path, or ``None``."""
        for prefix, handler in self._by_path.items():
            if path == prefix:
                return handler, ""
            if path.startswith(prefix) and path[len(prefix)] == "/":
                return handler, path[len(prefix) + 1:]
        return None

    def by_name(self, name: str) -> Handler | None:
        for handler in self._by_path.values():
            if handler_name(handler) == name:
                return handler
        return None
