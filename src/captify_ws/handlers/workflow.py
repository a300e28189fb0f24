"""``/ws/workflow``: the absolute state of workflow runs, exactly consistent for late joiners.

Channels ``workflow:{run_id}`` (any name after the class; ``workflow:user:42`` for a list view
works the same). Events carry absolute values (``run.status {status}``, ``step.status {step,
status, …}``); each publication's ``state_patch`` is merged into the run's state atomically
with its append, so the ``state`` and ``offset`` a late joiner (or a reloaded tab) gets are
exactly consistent, and the events after that offset follow. A ``version`` in the patch drops
stale updates (see :mod:`captify_ws.channels.state`). The state is durable: kept in the SQL
store too, it survives a Redis restart (a new epoch, with the state).

Clients subscribe by name; the configured authorizer decides (``jwt-claims``:
``"docs": {"workflow:*": "read"}``).
"""

from __future__ import annotations

from captify_ws.channels.endpoint import ChannelEndpoint
from captify_ws.channels.types import ChannelClass, Retention
from captify_ws.handlers.base import HandlerContext


class WorkflowHandler(ChannelEndpoint):
    """See the module docstring."""

    def __init__(self, server: HandlerContext) -> None:
        services = server.channel_services
        settings = services.settings
        workflow = ChannelClass(
            "workflow",
            Retention(history_size=settings.workflow_history_size,
                      history_ttl_s=settings.workflow_history_ttl_s,
                      meta_ttl_s=max(settings.channel_meta_ttl_s,
                                     settings.workflow_history_ttl_s), durable_state=True),
            description="a workflow run's events and absolute state")
        super().__init__(services, "/ws/workflow", "workflow", [workflow])
