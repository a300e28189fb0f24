"""Presence (rooms/presence.py): who controls an id, the clocks announced, what expires and
what is broadcast — in process, with the room's broadcast replaced by a list."""

from __future__ import annotations

import pytest

from captify_ws.errors import InvalidMessage
from captify_ws.protocol.ywebsocket import AwarenessEntry
from captify_ws.rooms.presence import Change, Presence, PresenceOverBound, awareness_id_for
from captify_ws.rooms.presence_entries import MAX_TOMBSTONES, OUTDATED_TIMEOUT_S
from tests.polling import eventually

pytestmark = pytest.mark.unit

ALICE, BOB = object(), object()


class Remote:
    """A presence owner of another instance (compared by value, like cluster RemoteOwner)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Remote) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _presence(max_states: int = 0, max_bytes: int = 0
              ) -> tuple[Presence, list[list[Change]]]:
    sent: list[list[Change]] = []
    presence = Presence(sent.append, flush_interval=0.01, renewal_interval=10,
                        max_states=max_states, max_bytes=max_bytes)
    return presence, sent


def _entries(sent: list[list[Change]]) -> list[tuple[int, int, str]]:
    return [(c.entry.client_id, c.entry.clock, c.entry.state) for batch in sent for c in batch]


def _entry(client_id: int, clock: int, state: str = '{"user":"a"}') -> AwarenessEntry:
    return AwarenessEntry(client_id, clock, state)


async def test_first_owner_keeps_the_id_against_forged_entries() -> None:
    """Another connection can neither overwrite nor remove an id someone controls; each
    attempt is counted as foreign and nothing of it is broadcast."""
    presence, sent = _presence()
    presence.apply([_entry(7, 1)], ALICE)
    presence.flush()
    presence.apply([_entry(7, 5, '{"user":"mallory"}')], BOB)
    presence.apply([_entry(7, 6, "null")], BOB)
    presence.flush()
    assert presence.states[7].state == '{"user":"a"}'
    assert presence.controller(7) is ALICE
    assert presence.stats.presence_ignored == {"foreign": 2}
    assert _entries(sent) == [(7, 1, '{"user":"a"}')]


async def test_an_echo_at_the_announced_clock_is_not_an_attempt() -> None:
    """A provider sending back what it applied (same clock) changes nothing and is not
    counted as an attack."""
    presence, sent = _presence()
    presence.apply([_entry(7, 1)], ALICE)
    presence.flush()
    presence.apply([_entry(7, 1)], BOB)
    presence.apply([_entry(7, 1)], ALICE)
    presence.flush()
    assert presence.stats.presence_ignored == {}
    assert len(sent) == 1


async def test_leaving_announces_the_removal_and_frees_the_id() -> None:
    """When its owner leaves, an id's state is removed for everyone; the next owner is
    announced at a clock above the removal, so clients that remember it accept the state."""
    presence, sent = _presence()
    presence.apply([_entry(7, 3)], ALICE)
    presence.remove_owned_by(ALICE)
    presence.flush()
    assert 7 not in presence.states and presence.controller(7) is None
    assert [c.released for c in sent[-1]] == [True]
    assert _entries(sent)[-1] == (7, 3, "null")
    presence.apply([_entry(7, 1, '{"user":"b"}')], BOB)  # a reconnecting provider restarts
    presence.flush()
    assert presence.controller(7) is BOB
    assert _entries(sent)[-1] == (7, 4, '{"user":"b"}')


async def test_changes_are_batched_and_flushed_by_the_timer() -> None:
    """Several changes within one flush interval go out as one broadcast, and only the
    last state of each id."""
    presence, sent = _presence()
    presence.apply([_entry(1, 1, '{"n":1}')], ALICE)
    presence.apply([_entry(1, 2, '{"n":2}')], ALICE)
    presence.apply([_entry(2, 1)], BOB)
    assert sent == []
    await eventually(lambda: sent, "the flush timer")
    assert len(sent) == 1
    assert sorted(_entries(sent)) == [(1, 2, '{"n":2}'), (2, 1, '{"user":"a"}')]


async def test_a_renewal_waits_for_the_renewal_timer() -> None:
    """A newer clock with the same state is not broadcast as a change; the renewal timer
    forwards it marked as a renewal."""
    sent: list[list[Change]] = []
    presence = Presence(sent.append, flush_interval=0.01, renewal_interval=0.05)
    presence.apply([_entry(1, 1)], ALICE)
    presence.flush()
    presence.apply([_entry(1, 2)], ALICE)
    presence.flush()
    assert len(sent) == 1
    await eventually(lambda: len(sent) == 2, "the renewal")
    (renewal,) = sent[1]
    assert renewal.renewal and renewal.entry.clock == 2
    presence.close()


async def test_a_state_nobody_renews_expires() -> None:
    """A Yjs client's state not renewed for OUTDATED_TIMEOUT_S is removed and the removal
    broadcast (y-protocols drops silent peers after 30 s)."""
    sent: list[list[Change]] = []
    presence = Presence(sent.append, flush_interval=0.01, renewal_interval=0.02)
    presence.apply([_entry(1, 1), _entry(2, 1)], ALICE)
    presence.flush()
    presence.states[1].updated_at -= OUTDATED_TIMEOUT_S + 1
    await eventually(lambda: 1 not in presence.states, "the outdated state to expire")
    assert (1, 1, "null") in _entries(sent)
    assert 2 in presence.states
    presence.close()


async def test_released_ids_are_bounded() -> None:
    """The clocks of released ids (tombstones) are kept for at most MAX_TOMBSTONES ids."""
    presence, _ = _presence()
    for client_id in range(1, MAX_TOMBSTONES + 51):
        presence.apply([_entry(client_id, 1)], client_id)
        presence.remove_owned_by(client_id)
    presence.flush()
    assert len(presence.slots) <= MAX_TOMBSTONES
    assert presence.owners() == []
    presence.close()


async def test_bounds_refuse_the_whole_message() -> None:
    """Past max_states ids (or max_bytes of states) a message raises PresenceOverBound and
    changes nothing."""
    presence, sent = _presence(max_states=2)
    presence.apply([_entry(1, 1)], ALICE)
    with pytest.raises(PresenceOverBound):
        presence.apply([_entry(2, 1), _entry(3, 1)], ALICE)
    presence.flush()
    assert set(presence.states) == {1}
    assert _entries(sent) == [(1, 1, '{"user":"a"}')]
    heavy, _ = _presence(max_bytes=20)
    with pytest.raises(PresenceOverBound):
        heavy.apply([_entry(1, 1, '{"name":"' + "x" * 20 + '"}')], ALICE)
    assert len(heavy) == 0
    assert heavy.stats.presence_ignored == {"bound": 1}


async def test_a_state_that_is_not_json_is_refused_before_anything_changes() -> None:
    """One bad state refuses the message: the good entries beside it are not applied."""
    presence, sent = _presence()
    with pytest.raises(InvalidMessage):
        presence.apply([_entry(1, 1), _entry(2, 1, "{not json")], ALICE)
    presence.flush()
    assert len(presence) == 0 and sent == []


async def test_json_clients_get_server_clocks_and_cannot_take_an_id() -> None:
    """A JSON client's state gets a numeric id and increasing clocks; another connection
    setting the same clientID is refused."""
    presence, sent = _presence()
    assert presence.set_json_state("carol", {"cursor": 1}, ALICE)
    assert presence.set_json_state("carol", {"cursor": 2}, ALICE)
    assert not presence.set_json_state("carol", {"cursor": 9}, BOB)
    presence.flush()
    number = awareness_id_for("carol")
    assert presence.states[number].value == {"cursor": 2}
    assert presence.states[number].clock == 2
    assert sent[0][0].json_client_id == "carol"
    assert presence.set_json_state("carol", None, ALICE)
    presence.flush()
    assert number not in presence.states


async def test_remote_entries_never_override_a_local_owner() -> None:
    """A change from another instance for an id a local connection controls is ignored;
    between remote owners the newer announced clock wins."""
    presence, _ = _presence()
    presence.apply([_entry(1, 1)], ALICE)
    local = lambda owner: not isinstance(owner, Remote)  # noqa: E731
    presence.apply_remote([(_entry(1, 9, '{"x":1}'), None, False)], Remote("i1"), local)
    presence.apply_remote([(_entry(2, 4), None, False)], Remote("i1"), local)
    presence.apply_remote([(_entry(2, 3, '{"old":1}'), None, False)], Remote("i2"), local)
    presence.apply_remote([(_entry(2, 5, '{"new":1}'), None, False)], Remote("i2"), local)
    assert presence.states[1].owner is ALICE
    assert presence.stats.presence_ignored == {"foreign": 1}
    assert presence.states[2].state == '{"new":1}' and presence.states[2].clock == 5
    presence.apply_remote([(_entry(2, 5, "null"), None, True)], Remote("i2"), local)
    assert 2 not in presence.states and presence.controller(2) is None


@pytest.mark.parametrize(("client_id", "expected"), [
    ("0", 0), ("12345", 12345), (str((1 << 53) - 1), (1 << 53) - 1),
])
def test_decimal_json_client_ids_are_kept(client_id: str, expected: int) -> None:
    """A decimal clientID below 2^53 is its own awareness id."""
    assert awareness_id_for(client_id) == expected


@pytest.mark.parametrize("client_id", ["carol", str(1 << 53), "١٢٣", "", "x" * 1000])
def test_other_json_client_ids_hash_above_yjs_ids(client_id: str) -> None:
    """Any other clientID hashes into [2^32, 2^53): never a Yjs client's own id, and exact
    in a JavaScript number."""
    value = awareness_id_for(client_id)
    assert 1 << 32 <= value < 1 << 53
    assert awareness_id_for(client_id) == value
