"""Presence as each wire carries it: y-websocket awareness messages cut to fit the message
limit, and the JSON protocol's ``awareness`` messages. Pure functions of the presence states;
the room (:class:`~captify_ws.rooms.document.DocumentRoom`) decides who receives them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from captify_ws.connection import PreparedFrame
from captify_ws.protocol import envelope, ywebsocket
from captify_ws.rooms.presence import PresenceState, chunked

if TYPE_CHECKING:
    from captify_ws.rooms.member import Wire


def frames_for(states: list[PresenceState], wire: Wire, document_id: str,
               max_frame: int) -> list[PreparedFrame]:
    """``states`` (everyone's current presence) as a joiner on ``wire`` receives them:
    awareness messages of at most ``max_frame`` bytes, or one JSON message per state."""
    if not states:
        return []
    if wire == "yws":
        return [PreparedFrame.binary(ywebsocket.encode_awareness(group))
                for group in awareness_groups((s.entry() for s in states), max_frame)]
    return [PreparedFrame.text(json_presence(document_id, state.entry(), state))
            for state in states]


def awareness_groups(entries: Iterable[ywebsocket.AwarenessEntry], max_frame: int
                     ) -> Iterator[list[ywebsocket.AwarenessEntry]]:
    """Entries in groups that each fit one frame of ``max_frame`` bytes (a document's presence
    can be larger than one message may be: issue 13.7)."""
    # Room for the frame's header and a Hocuspocus document name (names.MAX_NAME_CHARS).
    return chunked(entries, max(512, max_frame - 8192))


def json_presence(document_id: str, entry: ywebsocket.AwarenessEntry,
                  state: PresenceState | None, json_client_id: str | None = None) -> str:
    """A presence entry as the JSON protocol's ``awareness`` message (``data`` null = gone)."""
    value: Any = None
    if state is not None:
        json_client_id = state.json_client_id
        if state.value is None:
            state.value = json.loads(state.state)
        value = state.value
    client_id = json_client_id if json_client_id is not None else str(entry.client_id)
    return envelope.encode_message("awareness", document_id, value, client_id=client_id)
