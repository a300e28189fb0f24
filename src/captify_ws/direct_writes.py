"""The part of a connection a broadcast's fast path reads: :attr:`DirectWrites.direct_write`.

While a frame may go straight to a connection's transport (a transport that can take it
synchronously, not paused, not closing), ``direct_write`` is that transport's own write, else
``None``. A room's :class:`~captify_ws.audience.Audience` keeps these writes and calls them
all from C; it watches each connection (:meth:`DirectWrites.watch`) and hears every change at
once, even one in the middle of its broadcast (a write that fills the transport, a close).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

Watcher = Callable[[Any], None]


class DirectWrites:
    """Mixed into :class:`~captify_ws.connection.Connection` (which holds the slots)."""

    if not TYPE_CHECKING:  # the slots are Connection's (mypy: see the annotations)
        __slots__ = ()

    direct_write: Callable[[bytes], object] | None
    _watchers: list[Watcher] | None
    _paused: bool
    _closing: bool

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(connection)`` whenever :attr:`direct_write` changes."""
        if self._watchers is None:
            self._watchers = []
        self._watchers.append(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        """Stop calling ``watcher`` (nothing if it was not watching)."""
        if self._watchers is not None and watcher in self._watchers:
            self._watchers.remove(watcher)

    def _direct_target(self) -> Callable[[bytes], object] | None:
        """The transport's write for :attr:`direct_write`; ``None`` (this default): every
        frame goes through ``send_frame`` (a transport with a writer task of its own)."""
        return None

    def _write_state_changed(self) -> None:
        """Called on every pause, resume and close: updates :attr:`direct_write` and tells the
        watchers if it changed."""
        target = None if self._paused or self._closing else self._direct_target()
        if target is not self.direct_write:
            self.direct_write = target
            if self._watchers:
                for watcher in list(self._watchers):
                    watcher(self)
