"""The channel core without sockets: state patches, the recovery decision, both backends."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.channels import state as channel_state
from captify_ws.channels.backend import ChannelBackend
from captify_ws.channels.memory import MemoryBackend
from captify_ws.channels.recovery import NotRecovered, Recovered, decide
from captify_ws.channels.types import Outgoing, Position, Retention, StreamRead
from captify_ws.channelstore import MemoryChannelStore
from captify_ws.errors import ChannelError
from captify_ws.protocol import channels as wire
from captify_ws.protocol.channels import Since
from tests.polling import eventually
from tests.services import REDIS_URL, require_redis

pytestmark = pytest.mark.unit

RETENTION = Retention(history_size=5, history_ttl_s=60, meta_ttl_s=600)
DURABLE = Retention(history_size=5, history_ttl_s=60, meta_ttl_s=600, durable_state=True)


# -- state ------------------------------------------------------------------------------------


def test_patch_is_encoded_once_and_null_deletes() -> None:
    """Values are JSON-encoded; null removes the key; empty lists stay lists."""
    fields, version = channel_state.encode_patch({"a": [], "b": None, "version": 3}, 1000)
    assert fields == (("a", "[]"), ("b", None), ("version", "3"))
    assert version == 3.0
    state = {"b": '"x"', "c": "1"}
    channel_state.merge(state, fields)
    assert json.loads(channel_state.state_json(state)) == {"c": 1, "a": [], "version": 3}


@pytest.mark.parametrize(("patch", "code"), [
    ([1, 2], 4400), ({"": 1}, 4400), ({"k" * 257: 1}, 4400), ({"version": "3"}, 4400),
    ({"version": True}, 4400), ({"version": float("inf")}, 4400), ({"a": "x" * 2000}, 1009),
    ({"a": {1, 2}}, 4400),
])
def test_bad_patches_are_refused(patch: object, code: int) -> None:
    """Not an object, bad keys, a non-numeric version, too big, not JSON: ChannelError."""
    with pytest.raises(ChannelError) as caught:
        channel_state.encode_patch(patch, 1000)  # type: ignore[arg-type]
    assert caught.value.code == code


@pytest.mark.parametrize(("current", "version", "stale"), [
    (None, 1.0, False), ("1", 2.0, False), ("2", 2.0, True), ("3.5", 3.0, True),
    ('"text"', 1.0, False), ("2", None, False)])
def test_version_rule(current: str | None, version: float | None, stale: bool) -> None:
    """A patch is stale when the state's version is equal or higher."""
    assert channel_state.is_stale(current, version) is stale


# -- recovery ---------------------------------------------------------------------------------


def _read(top: int, first: int, since: int, epoch: str = "e", limit: int = 100) -> StreamRead:
    pubs = tuple((o, f"p{o}") for o in range(max(first, since + 1), top + 1)) \
        if top - since <= limit and first <= since + 1 else ()
    return StreamRead(Position(top, epoch), pubs, first)


@pytest.mark.parametrize(("since", "read", "expected"), [
    (Since(5, "e"), _read(5, 1, 5), Recovered(())),
    (Since(3, "e"), _read(5, 1, 3), Recovered(((4, "p4"), (5, "p5")))),
    (Since(3, "old"), _read(5, 1, 3), NotRecovered("epoch")),
    (Since(9, "e"), _read(5, 1, 9), NotRecovered("epoch")),
    (Since(1, "e"), _read(5, 4, 1), NotRecovered("trimmed")),
    (Since(1, "e"), _read(5, 6, 1), NotRecovered("expired")),
    (Since(1, "e"), _read(500, 1, 1), NotRecovered("too_far")),
    (Since(0, ""), _read(3, 1, 0), Recovered(((1, "p1"), (2, "p2"), (3, "p3")))),
    (Since(0, ""), _read(3, 2, 0), NotRecovered("trimmed")),
])
def test_decisions(since: Since, read: StreamRead, expected: object) -> None:
    """Every reason, and the two recoveries (from a position, and 'everything retained')."""
    assert decide(since, read, 100, 1 << 20) == expected


def test_too_many_bytes_is_too_far() -> None:
    """A replay over the byte bound is not sent."""
    assert decide(Since(3, "e"), _read(5, 1, 3), 100, 3) == NotRecovered("too_far")


@given(since=st.integers(0, 30), top=st.integers(0, 30), first=st.integers(1, 31),
       same_epoch=st.booleans(), hole=st.booleans())
def test_never_a_partial_replay(since: int, top: int, first: int, same_epoch: bool,
                                hole: bool) -> None:
    """Whatever the stream holds, a recovery replays exactly since+1..top, or nothing."""
    first = min(first, top + 1)
    retained = [(o, f"p{o}") for o in range(first, top + 1)]
    if hole and len(retained) > 2:
        del retained[1]
    wanted = tuple(p for p in retained if p[0] > since) if first <= since + 1 else ()
    read = StreamRead(Position(top, "e"), wanted, first)
    decision = decide(Since(since, "e" if same_epoch else "x"), read, 10, 1 << 20)
    if isinstance(decision, Recovered):
        assert [o for o, _ in decision.publications] == list(range(since + 1, top + 1))


# -- backends ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.services)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[ChannelBackend]:
    store = MemoryChannelStore()
    made: ChannelBackend
    if request.param == "memory":
        made = MemoryBackend(store, state_max_keys=4)
    else:
        require_redis()
        from captify_ws.channels.redis import RedisBackend

        made = RedisBackend(REDIS_URL, store, prefix=f"test-{secrets.token_hex(4)}",
                            state_max_keys=4)
    heard: list[tuple[str, int | None, str, str]] = []
    made.on_publication = lambda *args: heard.append(args)
    made.heard = heard  # type: ignore[attr-defined]
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def _outgoing(channel: str, data: object, patch: dict[str, object] | None = None,
              key: str | None = None) -> Outgoing:
    fields, version = channel_state.encode_patch(patch, 1 << 16)
    return Outgoing(wire.pub_head(channel), wire.pub_tail("ev", json.dumps(data), 1), fields,
                    version, key)


async def _until_heard(backend: ChannelBackend, count: int) -> list[tuple[str, int | None, str,
                                                                          str]]:
    heard = backend.heard  # type: ignore[attr-defined]
    await eventually(lambda: len(heard) >= count, f"{count} deliveries heard", timeout=5,
                     interval=0.01)
    return list(heard)


async def test_offsets_are_dense_and_frames_finished(backend: ChannelBackend) -> None:
    """Each publication gets the next offset; the frame a subscriber gets is complete JSON."""
    await backend.listen("t:a")
    positions = [await backend.publish("t:a", _outgoing("t:a", i), RETENTION) for i in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3]
    assert len({p.epoch for p in positions}) == 1
    heard = await _until_heard(backend, 3)
    assert [(c, o) for c, o, _, _ in heard] == [("t:a", 1), ("t:a", 2), ("t:a", 3)]
    assert json.loads(heard[2][3])["data"] == 2 and json.loads(heard[2][3])["offset"] == 3


async def test_history_is_capped_and_read_all_or_nothing(backend: ChannelBackend) -> None:
    """Reads answer every publication after an offset, or none past the limit; the first
    retained offset tells a trimmed history."""
    for i in range(230):  # Redis trims whole stream nodes (100 entries): enough for one
        await backend.publish("t:b", _outgoing("t:b", i), RETENTION)
    read = await backend.read("t:b", 228, 5, RETENTION)
    assert [o for o, _ in read.publications] == [229, 230] and read.position.offset == 230
    assert 1 < read.first_offset <= 226
    assert (await backend.read("t:b", 200, 5, RETENTION)).publications == ()
    page = await backend.read("t:b", 0, 2, RETENTION, partial=True)
    assert [o for o, _ in page.publications] == [read.first_offset, read.first_offset + 1]


async def test_idempotency_and_the_version_rule(backend: ChannelBackend) -> None:
    """A repeated key answers the first position and is not appended; a stale version is
    dropped; the state merges patches atomically with the offsets."""
    first = await backend.publish("t:c", _outgoing("t:c", 1, {"s": "a", "version": 2}, "k1"),
                                  RETENTION)
    again = await backend.publish("t:c", _outgoing("t:c", 1, {"s": "a", "version": 2}, "k1"),
                                  RETENTION)
    assert (again.offset, again.epoch, again.duplicate) == (first.offset, first.epoch, True)
    stale = await backend.publish("t:c", _outgoing("t:c", 2, {"s": "old", "version": 1}),
                                  RETENTION)
    assert stale.stale and stale.offset == first.offset
    newer = await backend.publish("t:c", _outgoing("t:c", 3, {"s": "b", "version": 3}),
                                  RETENTION)
    snap = await backend.snapshot("t:c", RETENTION)
    assert snap.position == Position(newer.offset, newer.epoch) and newer.offset == 2
    assert json.loads(snap.state_json) == {"s": "b", "version": 3}


async def test_state_key_bound(backend: ChannelBackend) -> None:
    """A patch that would take the state past its key bound is refused, nothing appended."""
    await backend.publish("t:d", _outgoing("t:d", 0, {"a": 1, "b": 2, "c": 3}), RETENTION)
    with pytest.raises(ChannelError) as caught:
        await backend.publish("t:d", _outgoing("t:d", 0, {"d": 4, "e": 5}), RETENTION)
    assert caught.value.code == 1009
    assert (await backend.read("t:d", 0, 10, RETENTION)).position.offset == 1


async def test_a_channel_read_first_gets_an_epoch(backend: ChannelBackend) -> None:
    """Reading a channel never published fixes its epoch; the first publication keeps it."""
    read = await backend.read("t:e", 0, 10, RETENTION)
    published = await backend.publish("t:e", _outgoing("t:e", 0), RETENTION)
    assert read.position == Position(0, published.epoch)
    positions = await backend.positions(["t:e", "t:never"])
    assert positions == {"t:e": Position(1, published.epoch), "t:never": None}


async def test_durable_state_comes_back_in_a_new_epoch() -> None:
    """With a new memory backend (a restart) a durable channel has a new epoch and its state."""
    store = MemoryChannelStore()
    first = MemoryBackend(store)
    await first.publish("t:f", _outgoing("t:f", 0, {"status": "running"}), DURABLE)
    old = await first.snapshot("t:f", DURABLE)
    second = MemoryBackend(store)
    snap = await second.snapshot("t:f", DURABLE)
    assert snap.position.epoch != old.position.epoch and snap.position.offset == 0
    assert json.loads(snap.state_json) == {"status": "running"}
