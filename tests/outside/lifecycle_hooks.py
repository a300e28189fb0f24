"""Hooks named by --hooks tests.outside.lifecycle_hooks:Recorder (a class: made with no
arguments) and tests.outside.lifecycle_hooks:store (a store, by --store module:attribute)."""

from __future__ import annotations

from typing import Any

from captify_ws import Principal, Reject
from captify_ws.events import (
    AuthenticateEvent,
    ChangeEvent,
    ConnectEvent,
    DisconnectEvent,
    LoadEvent,
    StoreEvent,
    UnloadEvent,
)
from captify_ws.hooks import Hooks
from captify_ws.store import MemoryStore

#: every Recorder made in this process, newest last
RECORDERS: list[Recorder] = []


class Recorder(Hooks):
    """Records every event; refuses the user "mallory"; gives "alice" a team claim."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        RECORDERS.append(self)

    def events_of(self, kind: str) -> list[Any]:
        return [e for e in self.events if type(e).__name__ == kind]

    def kinds(self, document_id: str | None = None) -> list[str]:
        return [type(e).__name__ for e in self.events
                if document_id is None or getattr(e, "document_id", None) == document_id]

    async def on_load(self, event: LoadEvent) -> None:
        self.events.append(event)

    async def on_change(self, event: ChangeEvent) -> None:
        self.events.append(event)

    def on_store(self, event: StoreEvent) -> None:  # a plain function works too
        self.events.append(event)

    async def on_unload(self, event: UnloadEvent) -> None:
        self.events.append(event)

    async def on_authenticate(self, event: AuthenticateEvent) -> Principal | None:
        self.events.append(event)
        if event.principal.user_id == "mallory":
            raise Reject(4403, "not you")
        if event.principal.user_id == "alice":
            return Principal("alice", {**event.principal.claims, "team": "blue"})
        return None

    async def on_connect(self, event: ConnectEvent) -> None:
        self.events.append(event)

    async def on_disconnect(self, event: DisconnectEvent) -> None:
        self.events.append(event)


class Broken(Hooks):
    """Fails on every change (the room must not notice)."""

    async def on_change(self, event: ChangeEvent) -> None:
        raise RuntimeError("the webhook endpoint is down")


def store(settings: Any) -> MemoryStore:
    """A document store of one's own, made from the settings."""
    made = MemoryStore()
    made.made_from = settings  # type: ignore[attr-defined]
    return made
