"""The Hocuspocus codec: frames in and out, malformed frames refused with the right close code,
and the "does this update add anything" test that read-only acknowledgements rely on."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text, get_update, write_message, write_var_uint

from captify_ws.errors import CloseCode, ProtocolError
from captify_ws.protocol import hocuspocus as hp
from captify_ws.protocol.ywebsocket import AwarenessEntry, encode_awareness_payload
from captify_ws.rooms.hocuspocus import adds_nothing, holds_structs

pytestmark = pytest.mark.unit


def _s(text: str) -> bytes:
    return write_message(text.encode())


def client_frame(address: str, message_type: int, payload: bytes = b"") -> bytes:
    """What a provider writes: varString(address) · varUint(type) · payload."""
    return _s(address) + write_var_uint(message_type) + payload


def _update(text: str = "hello") -> bytes:
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, text)
    return doc.get_update()


def test_server_frames_match_the_reference_bytes() -> None:
    """Authenticated, PermissionDenied, SyncStatus, CLOSE and the token request, byte for byte
    as Hocuspocus writes them for document "doc-1" (packages/common/src/auth.ts)."""
    enc = hp.FrameEncoder("doc-1")
    name = bytes.fromhex("05646f632d31")
    assert enc.authenticated(read_only=False) == name + b"\x02\x02\x0aread-write"
    assert enc.authenticated(read_only=True) == name + b"\x02\x02\x08readonly"
    assert enc.permission_denied("nope") == name + b"\x02\x01\x04nope"
    assert enc.sync_status(True) == name + b"\x08\x01"
    assert enc.sync_status(False) == name + b"\x08\x00"
    assert enc.close("bye") == name + b"\x07\x03bye"
    assert enc.token_request() == name + b"\x02\x00"
    assert hp.PING == b"\x09"


def test_addresses_are_utf8_with_byte_lengths() -> None:
    """A non-ASCII document name is prefixed with its UTF-8 byte length (lib0 writeVarString)."""
    enc = hp.FrameEncoder("Protokoll 🎉")
    assert enc.prefix == bytes((len("Protokoll 🎉".encode()),)) + "Protokoll 🎉".encode()
    update = _update()
    assert hp.decode(enc.sync_update(update)) == hp.SyncUpdate("Protokoll 🎉", update)


@pytest.mark.parametrize(("step", "kind"), [(0, hp.SyncStep1), (1, hp.SyncStep2),
                                        (2, hp.SyncUpdate)])
def test_sync_messages_round_trip(step: int, kind: Any) -> None:
    """A provider's sync messages decode to their events; the server's encode to the same."""
    payload = _update()
    frame = client_frame("d", 0, bytes((step,)) + write_message(payload))
    assert hp.decode(frame) == kind("d", payload)
    encoder = hp.FrameEncoder("d")
    encoded = {0: encoder.sync_step1, 1: encoder.sync_step2, 2: encoder.sync_update}[step]
    assert encoded(payload) == frame


def test_token_with_and_without_provider_version() -> None:
    """v3 sends only the token; v4 appends its version."""
    v3 = client_frame("d", 2, b"\x00" + _s("tok"))
    v4 = client_frame("d", 2, b"\x00" + _s("tok") + _s("4.8.0"))
    assert hp.decode(v3) == hp.Token("d", "tok", None)
    assert hp.decode(v4) == hp.Token("d", "tok", "4.8.0")


def test_other_client_messages() -> None:
    """Awareness, query-awareness, stateless, CLOSE and Pong."""
    entries = (AwarenessEntry(7, 2, '{"user":"Ann"}'),)
    awareness = client_frame("d", 1, write_message(encode_awareness_payload(entries)))
    assert hp.decode(awareness) == hp.Awareness("d", entries)
    assert hp.decode(hp.FrameEncoder("d").awareness(entries)) == hp.Awareness("d", entries)
    assert hp.decode(client_frame("d", 3)) == hp.QueryAwareness("d")
    assert hp.decode(client_frame("d", 5, _s('{"a":1}'))) == hp.Stateless("d", '{"a":1}')
    assert hp.decode(client_frame("d", 7)) == hp.Close("d")
    assert hp.decode(b"\x0a") == hp.Pong()
    assert hp.decode(client_frame("d", 42)) == hp.Unknown("d", 42)
    assert hp.decode(client_frame("d", 2, b"\x02" + _s("read-write"))) == hp.Unknown("d", 2)


def test_session_addresses_name_their_document() -> None:
    """``name\\0sessionId`` addresses the document before the separator."""
    assert hp.document_name("doc\0abc") == "doc"
    assert hp.document_name("doc") == "doc"
    assert hp.decode(client_frame("doc\0s1", 3)) == hp.QueryAwareness("doc\0s1")


@pytest.mark.parametrize("frame", [
    b"", b"\x05ab", b"\x02\xff\xfe\x00", b"\x01a", b"\x01a\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x09",  # a Ping sent by a client: a 9-byte address that is not there
])
def test_unreadable_address_or_type_is_4401(frame: bytes) -> None:
    """The address or the type cannot be read: BadAddress, close code 4401."""
    with pytest.raises(hp.BadAddress) as caught:
        hp.decode(frame)
    assert caught.value.close_code == CloseCode.UNAUTHORIZED


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x00\x00\x05ab", "truncated"),            # sync step 1 announcing 5 bytes
    (b"\x00\x07\x00", "unknown sync step"),
    (b"\x00\x02\x01a\x00", "unexpected bytes"),  # two messages in one frame
    (b"\x01\x03\x05\x01\x01", "announces"),      # awareness with 5 entries in 2 bytes
    (b"\x02\x00", "truncated"),                  # a Token without its token
    (b"\x04\x00\x00", "server-internal"),        # SyncReply
    (b"\x06\x02hi", "server-internal"),          # BroadcastStateless (Hocuspocus 4.1.1)
    (b"\x05\x02\xff\xfe", "UTF-8"),
])
def test_unreadable_payload_is_4205_and_names_its_document(payload: bytes, reason: str) -> None:
    """A message that cannot be read: BadPayload with close code 4205 and its address."""
    with pytest.raises(hp.BadPayload) as caught:
        hp.decode(_s("doc") + payload)
    assert caught.value.close_code == CloseCode.RESET_CONNECTION
    assert caught.value.address == "doc"
    assert reason in caught.value.message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_a_protocol_error(frame: bytes) -> None:
    """Fuzz: random frames give an event or a ProtocolError, never another exception."""
    code = None
    try:
        hp.decode(frame)
    except ProtocolError as exc:
        code = exc.close_code
    assert code in (None, CloseCode.UNAUTHORIZED, CloseCode.RESET_CONNECTION)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["d", "ä", "doc\0x"]), st.integers(0, 7), st.binary(max_size=24),
       st.data())
def test_truncated_frames_are_refused(address: str, message_type: int, payload: bytes,
                                      data: st.DataObject) -> None:
    """Every prefix of a frame either decodes or raises a ProtocolError."""
    frame = client_frame(address, message_type, payload)
    cut = data.draw(st.integers(0, len(frame)))
    with contextlib.suppress(ProtocolError):
        hp.decode(frame[:cut])


# -- what an update adds -------------------------------------------------------------------------

_ops = st.lists(st.tuples(st.sampled_from(["ins", "del"]), st.integers(0, 30),
                          st.text("abc", min_size=1, max_size=4)), max_size=8)


def _edit(doc: Doc, ops: list[tuple[str, int, str]]) -> None:
    text = doc.get("t", type=Text)
    for op, at, chars in ops:
        if op == "ins":
            text.insert(min(at, len(text)), chars)
        elif len(text):
            start = at % len(text)
            del text[start:min(len(text), start + len(chars))]


def _fingerprint(doc: Doc) -> tuple[bytes, bytes]:
    vector = doc.get_state()
    return vector, doc.get_update(vector)


@settings(max_examples=150, deadline=None)
@given(_ops, _ops, _ops)
def test_adds_nothing_is_true_exactly_when_applying_changes_nothing(
        shared: list[tuple[str, int, str]], server_ops: list[tuple[str, int, str]],
        client_ops: list[tuple[str, int, str]]) -> None:
    """Against Yjs semantics: an update adds nothing iff applying it leaves the server's state
    vector and delete set as they were (what Y.snapshotContainsUpdate answers)."""
    server: Doc = Doc()
    _edit(server, shared)
    client: Doc = Doc()
    client.apply_update(server.get_update())
    _edit(server, server_ops)
    _edit(client, client_ops)
    step2 = client.get_update(server.get_state())  # what the client answers our Step1 with
    vector, deletions = _fingerprint(server)
    missing = get_update(step2, vector)
    answer = not holds_structs(missing) and adds_nothing(missing, deletions)
    after: Doc = Doc()
    after.apply_update(server.get_update())
    after.apply_update(step2)
    assert answer == (_fingerprint(after) == (vector, deletions))
