"""Hostile input, property-based (hypothesis): random and mutated frames in both wire formats,
to the codecs and to a live server. Nothing unhandled, nobody else disturbed, and the document
always equals a replay of the updates that were valid."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from captify_ws.errors import ProtocolError
from captify_ws.protocol import envelope, ywebsocket
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.member import STORE_ORIGIN
from captify_ws.ydoc import YDoc
from tests.helpers import JsonClient, running_server


def _valid_updates() -> list[bytes]:
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for word in ("alpha ", "beta ", "gamma "):
        text.insert(len(text), word)
    del text[0:3]
    return updates


VALID = _valid_updates()
VALID_FRAMES = [ywebsocket.encode_sync_update(u) for u in VALID] + [
    ywebsocket.encode_sync_step1(b"\x00"),
    ywebsocket.encode_awareness([ywebsocket.AwarenessEntry(9, 1, '{"u":1}')]),
    ywebsocket.encode_query_awareness(),
]


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes]) -> bytes:
    """A valid frame with bytes flipped, cut, or inserted."""
    frame = bytearray(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and frame:
            at = draw(st.integers(0, len(frame) - 1))
            frame[at] = draw(st.integers(0, 255))
        elif action == "cut" and frame:
            frame = frame[:draw(st.integers(0, len(frame) - 1))]
        else:
            at = draw(st.integers(0, len(frame)))
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


binary_frames = st.one_of(st.binary(max_size=64), mutated(VALID_FRAMES))
json_frames = st.one_of(
    st.text(max_size=64),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=10).map(json.dumps),
    st.builds(lambda kind, data: json.dumps({"type": kind, "documentId": "h", "data": data}),
              st.sampled_from(envelope.CLIENT_TYPES),
              st.none() | st.text(max_size=12) | st.lists(st.integers(-5, 300), max_size=8)
              | st.builds(lambda b: base64.b64encode(b).decode(), mutated(VALID))),
)


@given(frame=binary_frames)
@settings(max_examples=400, deadline=None)
def test_binary_codec_never_raises_anything_else(frame: bytes) -> None:
    """decode_message answers an event or raises ProtocolError, for any bytes."""
    with contextlib.suppress(ProtocolError):
        ywebsocket.decode_message(frame)


@given(frame=json_frames)
@settings(max_examples=400, deadline=None)
def test_json_codec_never_raises_anything_else(frame: str) -> None:
    """decode_client_message answers an event or raises ProtocolError, for any text."""
    with contextlib.suppress(ProtocolError):
        envelope.decode_client_message(frame)


def _replay(accepted: list[bytes]) -> str:
    """The text a Yjs document holds after ``accepted``, replayed through :class:`YDoc` (the
    document layer that integrates as Yjs does, checked against npm yjs in
    tests/test_yjs_fidelity.py). A bare pycrdt ``Doc`` is not the oracle: yrs integrates an
    update whose own client's earlier clocks are missing, where Yjs keeps it pending (see
    :func:`test_an_update_after_a_gap_in_its_clients_clocks_waits_as_in_yjs`)."""
    doc = YDoc()
    for update in accepted:
        doc.apply(update)
    return str(doc.doc.get("text", type=Text))


#: Client 0x3490a8f16ec5: "alpha " at clocks 0-5, then "gamma " at clock 11 after "a" (a gap:
#: clocks 6-10 never sent). npm yjs 13 applying both shows "alpha " (the second waits for the
#: missing clocks); a bare pycrdt Doc shows "agamma lpha ".
_ALPHA = bytes.fromhex("01018bcad8dd88c5a40300040104746578740661" "6c70686120" "00")
_GAMMA_AFTER_A_GAP = bytes.fromhex("01018bcad8dd88c5a4030b848bcad8dd88c5a4030006"
                                   "67616d6d6120" "00")


def test_an_update_after_a_gap_in_its_clients_clocks_waits_as_in_yjs() -> None:
    """Found by the property below: the room holds what Yjs holds (verified with npm yjs),
    not what yrs would integrate."""
    async def scenario() -> None:
        room = DocumentRoom("h", awareness_flush_s=0.05, awareness_renewal_s=10)
        for update in (_ALPHA, _GAMMA_AFTER_A_GAP):
            room.apply_update(update, STORE_ORIGIN)
        assert str(room.doc.get("text", type=Text)) == "alpha "
        room.close()
    asyncio.run(scenario())


@given(updates=st.lists(st.one_of(st.sampled_from(VALID), mutated(VALID)), max_size=12))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_room_equals_replay_of_valid_updates(updates: list[bytes]) -> None:
    """Applying valid and corrupted updates: the room equals a replay of those it accepted,
    and a refused update changes nothing."""
    async def scenario() -> None:
        room = DocumentRoom("h", awareness_flush_s=0.05, awareness_renewal_s=10)
        accepted = []
        for update in updates:
            before = room.encode_state()
            try:
                room.apply_update(update, STORE_ORIGIN)
                accepted.append(update)
            except ProtocolError:
                assert room.encode_state() == before
        assert str(room.doc.get("text", type=Text)) == _replay(accepted)
        room.close()
    asyncio.run(scenario())


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@given(binary=st.lists(binary_frames, min_size=1, max_size=8),
       text=st.lists(json_frames, min_size=1, max_size=8))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_live_server_survives_hostile_frames(binary: list[bytes], text: list[str]) -> None:
    """Hostile frames on both wire formats of a live server: no handler failure, the other
    clients keep working, and the document equals a replay of the valid updates."""
    errors = _Errors()
    logging.getLogger("captify_ws").addHandler(errors)
    try:
        asyncio.run(_live(binary, text))
    finally:
        logging.getLogger("captify_ws").removeHandler(errors)
    assert errors.records == [], [r.getMessage() for r in errors.records]


async def _live(binary: list[bytes], text: list[str]) -> None:
    async with running_server() as srv:
        async with connect(srv.fabric("h", "watcher"), max_queue=None) as ws:
            watcher = JsonClient(ws, "h")
            await watcher.expect("connected")
            accepted: list[bytes] = []
            attacker = await connect(f"{srv.ws}/ws/fabric/h", max_queue=None)
            for frame in binary:
                if attacker.close_code is not None or attacker.state.name != "OPEN":
                    attacker = await connect(f"{srv.ws}/ws/fabric/h", max_queue=None)
                with contextlib.suppress(ConnectionClosed):
                    await attacker.send(frame)
                _model_yws(frame, accepted)
                await asyncio.sleep(0.005)
            await attacker.close()
            async with connect(srv.fabric("h", "json-attacker"), max_queue=None) as bad:
                for message in text:
                    await bad.send(message)
                    _model_json(message, accepted)
                await bad.send(json.dumps({"type": "sync", "documentId": "h"}))
                while json.loads(await asyncio.wait_for(bad.recv(), 5))["type"] != "synced":
                    pass
            # the watcher is still connected and served
            await watcher.edit("watcher;")
            await watcher.sync()
            accepted.append(watcher.doc.get_update())
            assert str(watcher.text) == _replay(accepted)


def _model_yws(frame: bytes, accepted: list[bytes]) -> None:
    """What the server should accept from a y-websocket frame."""
    try:
        event = ywebsocket.decode_message(frame)
    except ProtocolError:
        return
    if isinstance(event, (ywebsocket.SyncUpdate, ywebsocket.SyncStep2)):
        probe: Doc[Any] = Doc()
        for update in accepted:
            probe.apply_update(update)
        with contextlib.suppress(Exception):
            probe.apply_update(event.update)
            accepted.append(event.update)


def _model_json(message: str, accepted: list[bytes]) -> None:
    try:
        event = envelope.decode_client_message(message)
    except ProtocolError:
        return
    if isinstance(event, envelope.UpdateMessage) and event.document_id == "h":
        probe: Doc[Any] = Doc()
        for update in accepted:
            probe.apply_update(update)
        with contextlib.suppress(Exception):
            probe.apply_update(event.update)
            accepted.append(event.update)
