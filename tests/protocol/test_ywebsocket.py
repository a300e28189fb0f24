"""The y-websocket codec: encoder/decoder pairs, and malformed frames refused cleanly."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from captify_ws.errors import CloseCode, InvalidMessage
from captify_ws.protocol import ywebsocket as yws
from captify_ws.protocol.ywebsocket import AwarenessEntry

pytestmark = pytest.mark.unit


def _update() -> bytes:
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, "hello")
    return doc.get_update()


def test_sync_step1_round_trip() -> None:
    """A state vector survives encode → decode."""
    doc: Doc = Doc()
    doc.apply_update(_update())
    sv = doc.get_state()
    assert yws.decode_message(yws.encode_sync_step1(sv)) == yws.SyncStep1(sv)


def test_sync_step2_round_trip() -> None:
    """A step-2 update survives encode → decode."""
    update = _update()
    assert yws.decode_message(yws.encode_sync_step2(update)) == yws.SyncStep2(update)


def test_update_keeps_the_received_frame() -> None:
    """A sync update decodes to its update and keeps the frame for relaying as-is."""
    update = _update()
    frame = yws.encode_sync_update(update)
    event = yws.decode_message(frame)
    assert event == yws.SyncUpdate(update, frame)
    assert frame[:2] == b"\x00\x02"


def test_awareness_round_trip_with_non_ascii_state() -> None:
    """Awareness strings are written with their UTF-8 byte length (lib0 writeVarString)."""
    entries = (AwarenessEntry(1, 3, '{"user":{"name":"José 🎉"}}'),
               AwarenessEntry(2**40, 0, "null"))
    frame = yws.encode_awareness(entries)
    assert frame[0] == yws.MESSAGE_AWARENESS
    assert yws.decode_message(frame) == yws.AwarenessUpdate(entries)
    assert entries[1].removed and not entries[0].removed


def test_awareness_matches_y_protocols_bytes() -> None:
    """Byte-exact against y-protocols encodeAwarenessUpdate for one client (id 5, clock 1)."""
    state = '{"a":1}'
    expected = bytes([1, 1 + 1 + 1 + 1 + len(state), 1, 5, 1, len(state)]) + state.encode()
    assert yws.encode_awareness([AwarenessEntry(5, 1, state)]) == expected


def test_query_awareness_and_auth() -> None:
    """query-awareness has no body; an auth permission-denied carries its reason."""
    assert yws.decode_message(yws.encode_query_awareness()) == yws.QueryAwareness()
    assert yws.decode_message(yws.encode_permission_denied("read-only")) == \
        yws.AuthMessage(True, "read-only")


def test_unknown_message_type_is_tolerated() -> None:
    """An unknown message type decodes to UnknownMessage (ignored, as y-websocket does)."""
    assert yws.decode_message(b"\x07\x01\x02") == yws.UnknownMessage(7)


@pytest.mark.parametrize("frame", [
    b"",
    b"\x00",                      # sync without step
    b"\x00\x02",                  # update without payload length
    b"\x00\x02\x05abc",           # payload shorter than announced
    b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varuint too long
    b"\x00\x09\x00",              # unknown sync step
    b"\x00\x02\x01\x00extra",     # trailing bytes after the message
    b"\x01\x03\x05\x01\x02",      # awareness announcing 5 entries in 2 bytes
    b"\x01\x05\x01\x01\x01\x02\xff",  # awareness state not UTF-8
    b"\x80",                      # truncated varuint message type
])
def test_malformed_frames_raise_protocol_error(frame: bytes) -> None:
    """Truncated or malformed frames raise InvalidMessage with close code 1007, nothing else."""
    with pytest.raises(InvalidMessage) as info:
        yws.decode_message(frame)
    assert info.value.close_code == CloseCode.INVALID_PAYLOAD


def test_awareness_state_must_be_json() -> None:
    """A state that is not JSON is refused before anyone relays it."""
    assert yws.parse_awareness_state('{"x":[1,2]}') == {"x": [1, 2]}
    with pytest.raises(InvalidMessage):
        yws.parse_awareness_state("{not json")
