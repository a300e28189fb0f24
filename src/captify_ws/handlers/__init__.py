"""The handler registry's built-in list. Users add theirs with ``CAPTIFY_WS_HANDLERS``.

To add a built-in handler: write ``handlers/my_feature.py`` with a class taking a
``HandlerContext`` and having ``path``, ``on_connect``, ``on_message``, ``on_close``,
``on_error``; then list it here. (``handlers/agent.py`` still takes the whole ``Server``: the
server registers it itself, after these.)
"""

from __future__ import annotations

from captify_ws.handlers.base import Handler, HandlerFactory, HandlerRegistry
from captify_ws.handlers.fabric import FabricHandler
from captify_ws.handlers.hocuspocus import HocuspocusHandler
from captify_ws.handlers.notifications import NotificationsHandler
from captify_ws.handlers.workflow import WorkflowHandler

BUILTIN_HANDLERS: tuple[HandlerFactory, ...] = (
    FabricHandler,
    HocuspocusHandler,
    NotificationsHandler,
    WorkflowHandler,
)

__all__ = ["BUILTIN_HANDLERS", "Handler", "HandlerFactory", "HandlerRegistry"]
