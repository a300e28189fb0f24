"""The documents and steps service of one server: what server code (``captify_ws.api``, the
HTTP API, the broker's deliveries) does to documents.

Yjs updates applied as the server, reads, deletion, and the ProseMirror steps that go through a
document's step authority (and into its Y.XmlFragment when Yjs editors share it).
:class:`DocumentService` is one part of :class:`~captify_ws.server.Server` (the composition
root assembles it); it declares below the server attributes it uses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pycrdt import XmlFragment

from captify_ws.config import Settings
from captify_ws.errors import CaptifyError, CloseCode, StaleVersion
from captify_ws.protocol import envelope
from captify_ws.protocol.cluster import ExternalSteps
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.manager import RoomManager
from captify_ws.rooms.member import SERVER_ORIGIN
from captify_ws.rooms.pm_yjs import fragment_to_node, update_fragment
from captify_ws.rooms.steps import (
    Accepted,
    Behind,
    Duplicate,
    Outcome,
    StepAuthority,
    StepsResult,
    apply_steps,
    check_types,
)
from captify_ws.store import DocumentStore
from captify_ws.store.writer import StoreWriter

if TYPE_CHECKING:
    from captify_ws.cluster.bridge import ClusterBridge
    from captify_ws.history.versions import DocumentHistory

logger = logging.getLogger("captify_ws.server")


def _steps_text(document_id: str, accepted: Accepted) -> str:
    return envelope.encode_steps(document_id, accepted.version, accepted.steps,
                                 accepted.client_ids, accepted.change_id,
                                 step_texts=accepted.texts)


class DocumentService:
    """The documents part of the server. See the module docstring."""

    settings: Settings
    rooms: RoomManager
    store: DocumentStore
    writer: StoreWriter
    cluster: ClusterBridge | None
    history: DocumentHistory

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
