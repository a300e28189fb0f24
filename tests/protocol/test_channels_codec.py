"""The channel protocol codec: requests in, frames out, and a clear error for anything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.errors import ChannelError
from captify_ws.protocol import channels as wire

pytestmark = pytest.mark.unit


def test_subscribe_with_and_without_since() -> None:
    """subscribe decodes with an optional since {offset, epoch}."""
    assert wire.decode_request('{"type":"subscribe","id":1,"channel":"workflow:run-7"}') == \
        wire.Subscribe(1, "workflow:run-7", None)
    message = {"type": "subscribe", "id": 2, "channel": "workflow:run-7",
               "since": {"offset": 17, "epoch": "k2f9"}}
    assert wire.decode_request(json.dumps(message)) == \
        wire.Subscribe(2, "workflow:run-7", wire.Since(17, "k2f9"))


def test_unsubscribe_and_commands() -> None:
    """unsubscribe and a handler's command (any other type, all its fields kept)."""
    assert wire.decode_request('{"type":"unsubscribe","channel":"a:b"}') == \
        wire.Unsubscribe(None, "a:b")
    command = wire.decode_request('{"type":"mark_read","id":3,"ids":[1,2]}')
    assert isinstance(command, wire.Command)
    assert (command.kind, command.request_id, command.channel) == ("mark_read", 3, None)
    assert command.fields["ids"] == [1, 2]


@pytest.mark.parametrize(("message", "code", "text"), [
    ("not json", 4400, "invalid JSON"),
    ("[1]", 4400, "JSON object"),
    ('{"id":1}', 4400, "missing field 'type'"),
    ('{"type":"subscribe","id":"x","channel":"a:b"}', 4400, "'id' must be an integer"),
    ('{"type":"subscribe","id":-1,"channel":"a:b"}', 4400, "'id' must be an integer"),
    ('{"type":"subscribe","id":true,"channel":"a:b"}', 4400, "'id' must be an integer"),
    ('{"type":"subscribe"}', 4400, "non-empty string"),
    ('{"type":"subscribe","channel":"nocolon"}', 4400, "is not 'class:name'"),
    ('{"type":"subscribe","channel":"Upper:x"}', 4400, "is not 'class:name'"),
    ('{"type":"subscribe","channel":"a:"}', 4400, "is not 'class:name'"),
    ('{"type":"subscribe","channel":"a:b c"}', 4400, "whitespace"),
    ('{"type":"subscribe","channel":"a:{b}"}', 4400, "braces"),
    ('{"type":"subscribe","channel":"a:b","since":"17"}', 4400, "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":"17","epoch":"e"}}', 4400,
     "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":-1,"epoch":"e"}}', 4400,
     "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":1.5,"epoch":"e"}}', 4400,
     "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":9007199254740992,"epoch":"e"}}',
     4400, "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":1,"epoch":7}}', 4400,
     "malformed since"),
    ('{"type":"subscribe","channel":"a:b","since":{"offset":1,"epoch":"' + "e" * 65 + '"}}',
     4400, "malformed since"),
])
def test_malformed_requests_name_the_fault(message: str, code: int, text: str) -> None:
    """Each kind of malformed request raises ChannelError with a code and what was wrong."""
    with pytest.raises(ChannelError, match=text) as caught:
        wire.decode_request(message)
    assert caught.value.code == code


def test_channel_name_bound() -> None:
    """A channel name past the byte bound is refused (UTF-8 bytes, not characters)."""
    wire.check_channel("a:" + "é" * 127, 256)
    with pytest.raises(ChannelError, match="longer than 256 bytes"):
        wire.check_channel("a:" + "é" * 128, 256)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(["type", "id", "channel", "since",
                                                       "offset", "epoch", "x"]),
                                      children, max_size=5), max_leaves=20))
def test_any_json_decodes_or_raises_channel_error(value: Any) -> None:
    """Whatever JSON a client sends, the codec answers a request or a ChannelError."""
    error: ChannelError | None = None
    try:
        request: object = wire.decode_request(json.dumps(value))
    except ChannelError as exc:
        error, request = exc, None
    if error is not None:
        assert error.code == 4400 and error.message
    else:
        assert isinstance(request, (wire.Subscribe, wire.Unsubscribe, wire.Command))


def test_pub_frame_pieces_make_the_same_frame_as_json() -> None:
    """head + offset + epoch + tail is a JSON object with the fields in the issue's order."""
    head = wire.pub_head('workflow:"quoted"')
    tail = wire.pub_tail("step.status", '{"a":1}', 1764240000123, '{"a":null}')
    frame = wire.encode_pub(head, 18, "k2f9", tail)
    assert list(json.loads(frame).items()) == [
        ("type", "pub"), ("channel", 'workflow:"quoted"'), ("offset", 18), ("epoch", "k2f9"),
        ("event", "step.status"), ("data", {"a": 1}), ("patch", {"a": None}),
        ("ts", 1764240000123)]


def test_server_frames() -> None:
    """subscribed (both kinds), resync, unsubscribed, reply, error, ephemeral."""
    assert json.loads(wire.encode_subscribed(1, "a:b", "e", 23, recovered=True, replay=6)) == {
        "type": "subscribed", "id": 1, "channel": "a:b", "epoch": "e", "offset": 23,
        "recovered": True, "replay": 6}
    assert json.loads(wire.encode_subscribed(None, "a:b", "e", 40, recovered=False,
                                             reason="trimmed", state_json='{"x":1}')) == {
        "type": "subscribed", "channel": "a:b", "epoch": "e", "offset": 40,
        "recovered": False, "reason": "trimmed", "state": {"x": 1}}
    assert json.loads(wire.encode_resync("a:b", "e", 3, "epoch", state={"y": 2})) == {
        "type": "resync", "channel": "a:b", "epoch": "e", "offset": 3, "recovered": False,
        "reason": "epoch", "state": {"y": 2}}
    assert json.loads(wire.encode_unsubscribed("a:b", code=4403, reason="access revoked")) == {
        "type": "unsubscribed", "channel": "a:b", "code": 4403, "reason": "access revoked"}
    assert json.loads(wire.encode_reply(5, {"ok": True})) == {"type": "reply", "id": 5,
                                                              "data": {"ok": True}}
    assert json.loads(wire.encode_error(6, 4403, "no", "a:b")) == {
        "type": "error", "id": 6, "code": 4403, "message": "no", "channel": "a:b"}
    assert json.loads(wire.encode_ephemeral("a:b", "tick", "3", 7)) == {
        "type": "pub", "channel": "a:b", "event": "tick", "data": 3, "ts": 7,
        "ephemeral": True}
