"""Which documents this instance is alone with on the broker, so that it need not publish their
Yjs updates and presence changes (the cluster bridge's hot path) to nobody.

A document is *alone* once a hot-path publication on its channel reached at most one
subscriber (this instance's own subscription) and no message of another instance about the
document arrived between issuing that publication and learning its receiver count. It stops
being alone at the first message of another instance about it, at a broker reconnect of this
instance and when its room unloads. Why skipping is then safe is in
:mod:`captify_ws.cluster.bridge`. Nothing here talks to the broker.
"""

from __future__ import annotations

from functools import partial

from captify_ws.broker.base import ReceiversCallback


class Solitude:
    """The documents alone with this instance, and what decides it.

    Each document whose channel is subscribed has a *contact token*, a number that changes at
    every contact with another instance about it (and at a reconnect). A probe (one hot-path
    publication that asks for its receiver count, at most one in flight per document) carries
    the token of the moment it was issued; its answer makes the document alone only if the
    token is still current.
    """

    __slots__ = ("_contact", "_probes", "_tick", "alone", "skipped")

    def __init__(self) -> None:
        #: ids of the documents alone with this instance
        self.alone: set[str] = set()
        #: hot-path publications skipped since start (a counter)
        self.skipped = 0
        #: document id → its contact token, for the documents whose channel is subscribed
        self._contact: dict[str, int] = {}
        #: document id → the token its probe in flight was issued with
        self._probes: dict[str, int] = {}
        self._tick = 0

    def _next(self) -> int:
        self._tick += 1
        return self._tick

    def joined(self, document_id: str) -> None:
        """The document's channel is subscribed: it may become alone from now on."""
        self._contact[document_id] = self._next()

    def unloaded(self, document_id: str) -> None:
        """The document's room unloaded (its channel is being unsubscribed)."""
        self._contact.pop(document_id, None)
        self._probes.pop(document_id, None)
        self.alone.discard(document_id)

    def contact(self, document_id: str) -> bool:
        """Another instance said something about the document; whether it was alone."""
        if document_id in self._contact:
            self._contact[document_id] = self._next()
        if document_id in self.alone:
            self.alone.discard(document_id)
            return True
        return False

    def reset(self) -> set[str]:
        """The broker reconnected (messages may have been lost): nothing is alone, probes in
        flight are void. Returns the documents that were alone."""
        was = set(self.alone)
        self.alone.clear()  # in place: the bridge holds the set
        self._probes.clear()
        for document_id in self._contact:
            self._contact[document_id] = self._next()
        return was

    def probe(self, document_id: str) -> ReceiversCallback | None:
        """The callback to publish a hot-path message with, or ``None`` when a probe of the
        document is already in flight or its channel is not subscribed yet."""
        if document_id in self._probes:
            return None
        token = self._contact.get(document_id)
        if token is None:
            return None
        self._probes[document_id] = token
        return partial(self._answered, document_id, token)

    def _answered(self, document_id: str, token: int, receivers: int) -> None:
        if self._probes.get(document_id) != token:
            return  # void: a reset or an unload came in between
        del self._probes[document_id]
        if receivers <= 1 and self._contact.get(document_id) == token:
            self.alone.add(document_id)
