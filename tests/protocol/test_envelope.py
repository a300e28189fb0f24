"""The JSON envelope codec: every message type, the accepted byte shapes, the error texts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.errors import InvalidMessage
from captify_ws.protocol import envelope

pytestmark = pytest.mark.unit


def test_sync_without_and_with_state_vector() -> None:
    """sync decodes with an optional base64 state vector."""
    assert envelope.decode_client_message('{"type":"sync","documentId":"d"}') == \
        envelope.SyncRequest("d", None)
    sv = base64.b64encode(b"\x01\x02\x03").decode()
    message = json.dumps({"type": "sync", "documentId": "d", "data": {"stateVector": sv}})
    assert envelope.decode_client_message(message) == envelope.SyncRequest("d", b"\x01\x02\x03")


@pytest.mark.parametrize("payload", [
    {"data": base64.b64encode(b"\x01\x02\xff").decode()},
    {"update": base64.b64encode(b"\x01\x02\xff").decode()},
    {"data": [1, 2, 255]},
    {"data": {"0": 1, "1": 2, "2": 255}},
    {"update": {"1": 2, "0": 1, "2": 255}},
])
def test_update_accepts_every_byte_shape(payload: dict[str, object]) -> None:
    """base64, the seed's 'update' key, a byte list and JSON.stringify(Uint8Array) all work."""
    message = json.dumps({"type": "update", "documentId": "d", **payload})
    assert envelope.decode_client_message(message) == envelope.UpdateMessage("d", b"\x01\x02\xff")


@pytest.mark.parametrize(("message", "error"), [
    ("not json", "invalid JSON"),
    ("[1,2]", "must be a JSON object"),
    ('{"documentId":"d"}', "missing field 'type'"),
    ('{"type":"dance","documentId":"d"}', "unknown message type 'dance'"),
    ('{"type":"sync"}', "missing field 'documentId'"),
    ('{"type":"sync","documentId":7}', "'documentId' must be a string"),
    ('{"type":"update","documentId":"d"}', "missing field 'data'"),
    ('{"type":"update","documentId":"d","data":"%%%"}', "not valid base64"),
    ('{"type":"update","documentId":"d","data":[1,256]}', "integers 0-255"),
    ('{"type":"update","documentId":"d","data":{"0":1,"2":3}}', "keys 0..n-1"),
    ('{"type":"update","documentId":"d","data":3.5}', "base64 text"),
    ('{"type":"awareness","documentId":"d"}', "missing field 'data'"),
    ('{"type":"steps-since","documentId":"d","data":{"version":-1}}', "non-negative"),
])
def test_errors_say_what_was_wrong(message: str, error: str) -> None:
    """Each malformed message raises InvalidMessage whose text names the problem."""
    with pytest.raises(InvalidMessage) as info:
        envelope.decode_client_message(message)
    assert error in info.value.message


def test_awareness_selection_steps() -> None:
    """awareness, selection and steps keep their data as JSON values."""
    assert envelope.decode_client_message(
        '{"type":"awareness","documentId":"d","data":{"user":"a"}}') == \
        envelope.AwarenessMessage("d", {"user": "a"})
    assert envelope.decode_client_message(
        '{"type":"awareness","documentId":"d","data":null}') == envelope.AwarenessMessage("d", None)
    assert envelope.decode_client_message(
        '{"type":"selection","documentId":"d","data":{"anchor":1}}') == \
        envelope.SelectionMessage("d", {"anchor": 1})
    assert envelope.decode_client_message(
        '{"type":"steps","documentId":"d","data":{"steps":[]}}') == \
        envelope.StepsMessage("d", {"steps": []})


def test_server_messages_are_compact_json() -> None:
    """Encoders produce the documented shapes."""
    assert json.loads(envelope.encode_connected("d", "c", 2)) == {
        "type": "connected", "documentId": "d", "clientID": "c", "data": {"connections": 2}}
    assert json.loads(envelope.encode_synced("d", b"\x00\x00", b"\x00")) == {
        "type": "synced", "documentId": "d", "data": {"update": "AAA=", "stateVector": "AA=="}}
    assert json.loads(envelope.encode_update("d", b"\x01", "c")) == {
        "type": "update", "documentId": "d", "clientID": "c", "data": "AQ=="}
    assert json.loads(envelope.encode_error("d", "boom")) == {
        "type": "error", "documentId": "d", "message": "boom"}
    assert " " not in envelope.encode_connected("d", "c", 2)


@given(st.text(), st.binary(max_size=200), st.none() | st.text())
def test_update_text_is_what_the_generic_encoder_writes(document_id: str, update: bytes,
                                                        client_id: str | None) -> None:
    """The update message, put together by hand for speed, is byte for byte the generic
    encoder's text for any names (quotes, backslashes, control characters, non-ASCII)."""
    assert envelope.encode_update(document_id, update, client_id) == envelope.encode_message(
        "update", document_id, envelope.b64(update), client_id=client_id)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=12)


@given(st.text(), st.integers(min_value=0), st.lists(_json_values, min_size=1, max_size=3),
       st.none() | st.text())
def test_steps_from_their_stored_texts_are_what_the_generic_encoder_writes(
        document_id: str, version: int, steps: list[Any], change_id: str | None) -> None:
    """The steps message put together from the step log's texts (encoded once, as stored) is
    byte for byte the generic encoder's text, escapes and non-ASCII included."""
    texts = [json.dumps(step, separators=(",", ":")) for step in steps]
    client_ids = ["c"] * len(steps)
    expected = envelope.encode_steps(document_id, version, steps, client_ids, change_id)
    assert envelope.encode_steps(document_id, version, steps, client_ids, change_id,
                                 step_texts=texts) == expected
