"""Write coalescing (issue 20, item 3): the frames one loop turn produces for a socket leave in
one write — in order, the very same frame objects for every socket, counted once in the ledger.

On real servers (both transports) a writer puts several Yjs updates in one TCP segment, so the
server handles them in one loop turn; every reader must get exactly those messages, in order,
and its socket must have been written once for all of them (the transport is wrapped to count
its writes; the bytes still go to the real socket). The ledger is checked on connections whose
transport the test controls, with generated sequences of sends, stalls and drains.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text, create_update_message
from websockets.asyncio.client import ClientConnection, connect

from captify_ws.connection import Connection, ConnectionLimits, PreparedFrame, UpgradeRequest
from captify_ws.outbound import OutboundBudget
from captify_ws.rooms import fanout
from captify_ws.server import Server
from tests.helpers import RunningServer, running_server


class Recorder:
    """A transport that records each write call (one list of chunks per call) and passes the
    bytes on to the real transport."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.calls: list[list[bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append([data])
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        self.calls.append(chunks)
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _record(conn: Connection) -> Recorder:
    """Count the writes to ``conn``'s socket from now on."""
    if conn.transport_name == "native":
        recorder = Recorder(conn._raw)  # type: ignore[attr-defined]
        conn._raw = recorder  # type: ignore[attr-defined]
        conn._raw_write = recorder.write  # type: ignore[attr-defined]
        conn._write_state_changed()  # broadcasts take the recorder's write from now on
    else:
        protocol = conn._access  # type: ignore[attr-defined]
        recorder = Recorder(protocol.transport)
        protocol.transport = recorder
    return recorder


def _connections(server: Server) -> list[Connection]:
    return [conn for conns in server.connections.values() for conn in conns]


def _updates(count: int) -> list[bytes]:
    """``count`` real Yjs updates of one author, each appending to a text."""
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    updates = []
    for index in range(count):
        before = doc.get_state()
        text += f"edit {index}; "
        updates.append(doc.get_update(before))
    return updates


async def _send_together(ws: ClientConnection, messages: list[bytes | str]) -> None:
    """Several WebSocket messages in one TCP write (the server reads them in one turn)."""
    for message in messages:
        if isinstance(message, str):
            ws.protocol.send_text(message.encode())
        else:
            ws.protocol.send_binary(message)
    ws.transport.write(b"".join(ws.protocol.data_to_send()))


async def _readers(running: RunningServer, doc: str, count: int) -> list[ClientConnection]:
    readers = [await connect(f"{running.ws}/ws/fabric/{doc}") for _ in range(count)]
    for reader in readers:
        await asyncio.wait_for(reader.recv(), 5)  # the server's SyncStep1
    return readers


async def _next_updates(ws: ClientConnection, count: int) -> list[bytes]:
    """The next ``count`` sync-update messages (others, such as awareness, are skipped)."""
    got: list[bytes] = []
    while len(got) < count:
        message = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(message, bytes)
        if message[:2] == b"\x00\x02":
            got.append(message)
    return got


def _calls_with(recorder: Recorder, frames: list[bytes]) -> list[list[bytes]]:
    return [call for call in recorder.calls if any(chunk in frames for chunk in call)]


async def test_a_turns_updates_leave_in_one_write_in_order(transport: str) -> None:
    """Six updates in one segment: each reader (and the writer's echo) gets the six messages
    byte for byte in order, from one write of its socket holding the same six frame objects."""
    messages = [create_update_message(update) for update in _updates(6)]
    frames = [b"\x82" + bytes((len(m),)) + m for m in messages]  # server frames: unmasked
    async with running_server(transport) as running:
        readers = await _readers(running, "coalesce", 3)
        async with connect(f"{running.ws}/ws/fabric/coalesce") as writer:
            await asyncio.wait_for(writer.recv(), 5)
            recorders = [_record(conn) for conn in _connections(running.server)]
            assert len(recorders) == 4
            await _send_together(writer, list(messages))
            for ws in [*readers, writer]:
                assert await _next_updates(ws, 6) == messages
            shared: list[bytes] | None = None
            for recorder in recorders:
                calls = _calls_with(recorder, frames)
                assert len(calls) == 1, calls
                assert calls[0] == frames
                if shared is None:
                    shared = calls[0]
                else:  # the same bytes objects on every socket: encoded once
                    assert all(a is b for a, b in zip(calls[0], shared, strict=True))
        for reader in readers:
            await reader.close()


async def test_one_update_a_turn_is_written_at_once(transport: str) -> None:
    """At low rates nothing waits: one update, one frame, written by itself (native: during
    the broadcast; ASGI: by the connection's writer task), and no batching call."""
    messages = [create_update_message(update) for update in _updates(3)]
    frames = [b"\x82" + bytes((len(m),)) + m for m in messages]
    async with running_server(transport) as running:
        readers = await _readers(running, "one-by-one", 2)
        async with connect(f"{running.ws}/ws/fabric/one-by-one") as writer:
            await asyncio.wait_for(writer.recv(), 5)
            recorders = [_record(conn) for conn in _connections(running.server)]
            for message in messages:
                await writer.send(message)
                for ws in readers:
                    assert await _next_updates(ws, 1) == [message]
            for recorder in recorders[:2]:
                calls = _calls_with(recorder, frames)
                assert sorted(map(len, calls)) == [1, 1, 1]
        for reader in readers:
            await reader.close()


async def test_json_readers_get_a_turns_updates_in_one_write_without_their_own(
        transport: str) -> None:
    """JSON members: one write with every update of the turn in order, except those they
    sent themselves (the seed's rule); the frames are shared between the readers."""
    updates = _updates(4)
    async with running_server(transport) as running:
        doc = "coalesce-json"
        clients = [await connect(running.fabric(doc, f"c{i}")) for i in range(3)]
        for client in clients:
            assert json.loads(await asyncio.wait_for(client.recv(), 5))["type"] == "connected"
        recorders = {conn.request.query.get("clientID"): _record(conn)
                     for conn in _connections(running.server)}
        sent = [json.dumps({"type": "update", "documentId": doc,
                            "data": base64.b64encode(update).decode()}) for update in updates]
        await _send_together(clients[0], list(sent))
        for reader in clients[1:]:
            got = [json.loads(await asyncio.wait_for(reader.recv(), 5)) for _ in updates]
            assert [m["type"] for m in got] == ["update"] * 4
            assert [base64.b64decode(m["data"]) for m in got] == updates
            assert {m["clientID"] for m in got} == {"c0"}
        calls = [recorders[f"c{i}"].calls[-1] for i in (1, 2)]
        assert len(calls[0]) == 4
        assert all(a is b for a, b in zip(calls[0], calls[1], strict=True))
        assert not any(b'"update"' in b"".join(call) for call in recorders["c0"].calls)
        for client in clients:
            await client.close()


async def test_a_json_update_is_encoded_once_for_every_reader(transport: str) -> None:
    """One update (one loop turn): every JSON reader's socket is written the very same bytes
    object, the ``update`` message encoded once for the broadcast."""
    update = _updates(1)[0]
    async with running_server(transport) as running:
        doc = "json-once"
        clients = [await connect(running.fabric(doc, f"c{i}")) for i in range(4)]
        for client in clients:
            assert json.loads(await asyncio.wait_for(client.recv(), 5))["type"] == "connected"
        recorders = {conn.request.query.get("clientID"): _record(conn)
                     for conn in _connections(running.server)}
        await clients[0].send(json.dumps({"type": "update", "documentId": doc,
                                          "data": base64.b64encode(update).decode()}))
        for reader in clients[1:]:
            message = json.loads(await asyncio.wait_for(reader.recv(), 5))
            assert base64.b64decode(message["data"]) == update
        writes = [recorders[f"c{i}"].calls for i in (1, 2, 3)]
        assert [len(calls) for calls in writes] == [1, 1, 1]
        assert writes[0][0][0] is writes[1][0][0] is writes[2][0][0]
        for client in clients:
            await client.close()


# -- the ledger, on connections whose transport the test controls ---------------------------

class Socket(Connection):
    """A transport that is a byte counter: ``fill`` stops it, ``drain`` empties it."""

    __slots__ = ("buffered", "writes")

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__(UpgradeRequest("/ws/fabric/t"), None, "t",  # type: ignore[arg-type]
                         limits=limits)
        self.buffered = 0
        self.writes: list[list[PreparedFrame]] = []

    def _write(self, frame: PreparedFrame) -> None:
        self._write_many((frame,))

    def _write_many(self, frames: Any) -> None:
        self.writes.append(list(frames))
        self.buffered += sum(len(frame) for frame in frames)

    def _transport_buffered(self) -> int:
        return self.buffered

    def _close_transport(self, code: int, reason: str, flush: list[PreparedFrame]) -> None:
        pass

    def fill(self) -> None:
        self._set_paused(True)

    def drain(self) -> None:
        self.buffered = 0
        self._set_paused(False)

    def sent(self) -> list[PreparedFrame]:
        return [frame for write in self.writes for frame in write]


def _limits() -> ConnectionLimits:
    # send_timeout_s=0: no stall timer (these tests run without an event loop)
    return ConnectionLimits(send_budget=1 << 30, outbound=OutboundBudget(1 << 40, 0))


async def test_queued_frames_leave_in_one_write_when_the_transport_drains() -> None:
    limits = _limits()
    conns = [Socket(limits) for _ in range(3)]
    for conn in conns:
        conn.fill()
    frames = [PreparedFrame.binary(bytes([i]) * 100) for i in range(5)]
    for conn in conns:
        conn.send_frames(frames[:2])
        conn.send_frame(frames[2])
        conn.send_frames(frames[3:])
    assert limits.outbound.total == 500  # five frames, each once, whoever holds them
    assert limits.stats.frames_out == 15
    for conn in conns:
        conn.drain()
        assert conn.writes == [frames]
    assert limits.outbound.total == 0


async def test_a_batch_that_fills_the_transport_is_held_once() -> None:
    """The write that fills the transport: its frames stay counted (once for all the
    connections that hold them) until the transport drains."""
    limits = _limits()
    conns = [Socket(limits) for _ in range(4)]
    frames = [PreparedFrame.binary(b"x" * 1000) for _ in range(3)]

    class Filling(Socket):
        def _write_many(self, frames: Any) -> None:
            super()._write_many(frames)
            self.fill()

    filling = [Filling(limits) for _ in range(2)]
    for conn in [*conns, *filling]:
        conn.send_frames(frames)
    assert limits.outbound.total == 3000
    for conn in filling:
        conn.drain()
    assert limits.outbound.total == 0


def test_senders_get_the_others_updates_in_one_write() -> None:
    limits = _limits()
    conns = [Socket(limits) for _ in range(3)]
    m0, m1, m2 = object(), object(), object()
    members = dict(zip(conns, [m0, m1, m2], strict=True))
    frames = [PreparedFrame.text(str(i)) for i in range(4)]
    fanout.to_all_but_senders(members, frames, [m0, None, m0, m1])
    assert conns[0].writes == [[frames[1], frames[3]]]
    assert conns[1].writes == [[frames[0], frames[1], frames[2]]]
    assert conns[2].writes == [frames]


_OPS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(0, 5), st.lists(st.integers(1, 300), min_size=1,
                                                             max_size=4)),
    st.tuples(st.just("fill"), st.integers(0, 5), st.just([])),
    st.tuples(st.just("drain"), st.integers(0, 5), st.just([]))), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_OPS, st.integers(1, 3))
def test_generated_sends_stalls_and_drains_keep_order_and_the_ledger(
        ops: list[tuple[str, int, list[int]]], connections: int) -> None:
    """Any mix of batches to a group of connections, stalls and drains: each connection's
    writes hold its frames in the order they were sent, while anything waits the ledger
    counts every waiting frame once, and when all is drained it is back to zero."""
    limits = _limits()
    groups = [[Socket(limits) for _ in range(connections)] for _ in range(6)]
    expected: dict[Socket, list[PreparedFrame]] = {c: [] for g in groups for c in g}
    for op, group, sizes in ops:
        for conn in groups[group]:
            if op == "fill" and not conn._paused:
                conn.fill()
            elif op == "drain" and conn._paused:
                conn.drain()
        if op == "send":
            frames = [PreparedFrame.binary(b"\0" * size) for size in sizes]
            for conn in groups[group]:
                conn.send_frames(frames)
                expected[conn] += frames
        waiting = {id(f): len(f) for c in expected for f in c._pending}
        waiting.update({id(f): len(f) for c in expected for f in (c._trigger or ())})
        private = sum(c._private for c in expected)
        assert limits.outbound.total == sum(waiting.values()) + private
    for conn, frames_sent in expected.items():
        if conn._paused:
            conn.drain()
        assert conn.sent() == frames_sent
        assert all(len(write) >= 1 for write in conn.writes)
    assert limits.outbound.total == 0


@pytest.mark.parametrize("count", [1, 2, 40])
def test_to_all_shares_one_sequence(count: int) -> None:
    limits = _limits()
    conns = [Socket(limits) for _ in range(5)]
    frames = [PreparedFrame.binary(bytes([i])) for i in range(count)]
    fanout.to_all(conns, frames)
    for conn in conns:
        assert conn.writes == [frames]
        assert all(a is b for a, b in zip(conn.writes[0], frames, strict=True))
