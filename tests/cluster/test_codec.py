"""The wire between instances (protocol/cluster.py): what crosses, round trips of every body,
and the refusal of anything else with InvalidMessage."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captify_ws.errors import InvalidMessage
from captify_ws.protocol import cluster as wire
from captify_ws.protocol.ywebsocket import AwarenessEntry

pytestmark = pytest.mark.unit

KINDS = [wire.UPDATE, wire.AWARENESS, wire.JSON_ALL, wire.JSON_CLIENT, wire.STATE_VECTOR,
         wire.PRESENCE_QUERY, wire.STEPS, wire.STATELESS, wire.HEARTBEAT, wire.DIGEST,
         wire.CONTROL]
FAST = settings(max_examples=60, deadline=None)

instances = st.text(max_size=40)
uints = st.integers(min_value=0, max_value=(1 << 53) - 1)
states = st.one_of(st.just("null"), st.dictionaries(st.text(max_size=8), st.integers(),
                                                    max_size=3).map(json.dumps))
remote_awareness = st.builds(
    wire.RemoteAwareness, st.builds(AwarenessEntry, uints, uints, states),
    st.one_of(st.none(), st.text(min_size=1, max_size=12)), st.text(max_size=20), st.booleans())


@FAST
@given(kind=st.sampled_from(KINDS), instance=instances, body=st.binary(max_size=64))
def test_every_kind_round_trips_with_its_sender(kind: int, instance: str, body: bytes) -> None:
    """A message names its kind and the instance that sent it, and carries its body intact."""
    assert wire.decode(wire.encode(kind, instance, body)) == wire.ClusterMessage(
        kind, instance, body)


@FAST
@given(items=st.lists(remote_awareness, max_size=6))
def test_awareness_entries_round_trip(items: list[wire.RemoteAwareness]) -> None:
    """Presence crosses with its clock, state, JSON clientID, owner key and release flag."""
    assert wire.decode_awareness(wire.encode_awareness(items)) == items


@FAST
@given(vectors=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=20)), max_size=6))
def test_digests_round_trip(vectors: list[tuple[str, bytes]]) -> None:
    """An anti-entropy digest carries every (document, state vector) pair in order."""
    assert wire.decode_digest(wire.encode_digest(vectors)) == vectors


@FAST
@given(client_id=st.text(max_size=20), text=st.text(max_size=60))
def test_a_message_for_one_client_round_trips(client_id: str, text: str) -> None:
    """A JSON message for one clientID keeps both the clientID and the text."""
    assert wire.decode_to_client(wire.encode_to_client(client_id, text)) == (client_id, text)


@pytest.mark.parametrize("data", [
    b"", b"\xca", b"\xca\x01U", b"\xcb\x01U\x00", b"\xca\x02U\x00",
    b"\xca\x01U\x05abc", b"\xca\x01U\x02\xff\xfe", b'{"type":"steps"}',
], ids=["empty", "magic-only", "no-instance", "wrong-magic", "wrong-version", "truncated",
        "instance-not-utf8", "json"])
def test_what_is_not_a_cluster_message_is_refused(data: bytes) -> None:
    """Bytes that are not a complete captify-ws message raise InvalidMessage."""
    with pytest.raises(InvalidMessage):
        wire.decode(data)


def _valid_bodies() -> list[tuple[str, Any, bytes]]:
    entry = wire.RemoteAwareness(AwarenessEntry(300, 2, '{"a":1}'), "carol", "c1\0", True)
    return [
        ("awareness", wire.decode_awareness, wire.encode_awareness([entry, entry])),
        ("digest", wire.decode_digest, wire.encode_digest([("doc-1", b"\x01\x02\x03")])),
        ("to-client", wire.decode_to_client, wire.encode_to_client("carol", '{"t":1}')),
    ]


@pytest.mark.parametrize(("name", "decode", "body"), _valid_bodies(),
                         ids=[name for name, _, _ in _valid_bodies()])
def test_every_truncation_or_extension_of_a_body_is_refused(name: str, decode: Any,
                                                            body: bytes) -> None:
    """Each strict prefix of a structured body, and the body with trailing bytes, raises
    InvalidMessage (never IndexError, UnicodeDecodeError or a partial result)."""
    decode(body)
    for end in range(len(body) - (name == "to-client")):
        if name == "to-client" and end >= 1 + len("carol"):
            continue  # past the clientID the rest is text: any prefix of it is a text
        with pytest.raises(InvalidMessage):
            decode(body[:end])
    if name != "to-client":
        with pytest.raises(InvalidMessage):
            decode(body + b"\x00")


@FAST
@given(body=st.binary(max_size=80))
def test_any_body_decodes_or_raises_invalid_message(body: bytes) -> None:
    """Whatever a body holds, each decoder returns a value or raises InvalidMessage."""
    for decode in (wire.decode, wire.decode_awareness, wire.decode_digest,
                   wire.decode_to_client, wire.decode_json, wire.decode_steps,
                   wire.decode_text, wire.decode_heartbeat, wire.decode_object):
        with contextlib.suppress(InvalidMessage):
            decode(body)


def test_steps_round_trip() -> None:
    """Steps an authority accepted cross with their version, client ids and change id."""
    body = wire.encode_json({"version": 4, "steps": [{"stepType": "replaceAround"}],
                             "clientIDs": ["c1"], "changeId": "ch-1"})
    assert wire.decode_steps(body) == (4, [{"stepType": "replaceAround"}], ["c1"], "ch-1")


@pytest.mark.parametrize("value", [
    [], "steps", {"steps": [], "clientIDs": []}, {"version": "1", "steps": [], "clientIDs": []},
    {"version": True, "steps": [], "clientIDs": []}, {"version": 1, "steps": {}, "clientIDs": []},
    {"version": 1, "steps": [1], "clientIDs": "c"}, {"version": -1, "steps": [], "clientIDs": []},
])
def test_steps_bodies_of_the_wrong_shape_are_refused(value: Any) -> None:
    """A steps body whose fields are missing or of the wrong type raises InvalidMessage."""
    with pytest.raises(InvalidMessage):
        wire.decode_steps(wire.encode_json(value))


@pytest.mark.parametrize(("message", "error"), [
    (b"not json", "not JSON"),
    (b"[]", "expected"),
    (b'{"type":"update","documentId":"d"}', "expected"),
    (b'{"type":"steps","documentId":1,"steps":[],"changeId":1}', "'documentId'"),
    (b'{"type":"steps","documentId":"","steps":[],"changeId":1}', "'documentId'"),
    (b'{"type":"steps","documentId":"d","steps":{},"changeId":1}', "'steps'"),
    (b'{"type":"steps","documentId":"d","steps":[]}', "'changeId'"),
    (b'{"type":"steps","documentId":"d","steps":[],"changeId":1,"clientID":2}', "'clientID'"),
    (b'{"type":"steps","documentId":"d","steps":[],"changeId":1,"version":true}', "'version'"),
    (b'{"type":"stateless","documentId":"d","payload":{}}', "'payload'"),
    (b'{"type":"stateless","documentId":"d","payload":"p","userId":1}', "'userId'"),
    (b'{"type":"stateless","documentId":"d","payload":"p","connectionId":1}', "'connectionId'"),
    (b'{"type":"stateless","documentId":"d","payload":"p","userId":"u","connectionId":"c"}',
     "not both"),
])
def test_a_backends_bad_publish_is_refused_with_the_field_named(message: bytes,
                                                                 error: str) -> None:
    """The publish channel's contract (README "Scaling out"): a message that breaks it
    raises InvalidMessage naming what is wrong."""
    with pytest.raises(InvalidMessage, match=error):
        wire.decode_external(message)


def test_a_backends_publish_is_read() -> None:
    """Valid steps and stateless messages decode to their typed form."""
    steps = wire.decode_external(b'{"type":"steps","documentId":"d","steps":[{}],'
                                 b'"changeId":"c","clientID":"x","version":3}')
    assert steps == wire.ExternalSteps("d", [{}], "c", "x", 3)
    stateless = wire.decode_external(b'{"type":"stateless","documentId":"d","payload":"p",'
                                     b'"userId":"u"}')
    assert stateless == wire.ExternalStateless("d", "p", "u", None)


@pytest.mark.parametrize(("body", "expected"), [
    ({"handlers": {"fabric": 2}, "documents": {"d": 1}, "sentAt": 5.5},
     ({"fabric": 2}, {"d": 1}, 5.5)),
    ({"handlers": ["fabric"], "documents": {"d": "1", "e": True, "f": 3}},
     ({}, {"f": 3}, None)),
    ({"sentAt": "now"}, ({}, {}, None)),
])
def test_heartbeat_counts_are_integers_or_left_out(body: dict[str, Any],
                                                   expected: tuple[Any, ...]) -> None:
    """A heartbeat's counts feed the cluster-wide connection counts: only integer counts
    are taken, so a bad heartbeat cannot break counting later."""
    assert wire.decode_heartbeat(wire.encode_json(body)) == expected


@pytest.mark.parametrize("body", [b"[1]", b'"x"', b"\xff", b"[" * 100_000])
def test_object_bodies_refuse_anything_else(body: bytes) -> None:
    """Heartbeat, control and stateless bodies must be JSON objects."""
    with pytest.raises(InvalidMessage):
        wire.decode_object(body)
