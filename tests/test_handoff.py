"""transport/handoff.py on real sockets in one process: a TCP connection accepted by "worker 0"
moves to "worker 1" over the ``--workers`` channels with the bytes read so far, and the client
never notices; when a move cannot happen the connection stays, open."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from captify_ws.transport.handoff import (
    ENVIRONMENT,
    HERE,
    MAX_MESSAGE,
    RETURNED,
    Handoff,
    make_channels,
    owner_of,
)
from tests.polling import eventually

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _run(loop_name: str, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(main)


class Workers(list[Handoff]):
    """The workers' ends of the channels, in this process, each with descriptors of its own
    as a worker process inherits them; ``again(index)`` is a worker started again."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.supervisor, self.environments, _ = make_channels(count)
        for index in range(count):
            self.again(index)

    def again(self, index: int) -> Handoff:
        entry = self.environments[index][ENVIRONMENT]
        position, count, *fds = entry.replace(",", "/").split("/")
        own = [str(os.dup(int(fd))) for fd in fds]
        handoff = Handoff.from_environ(
            {ENVIRONMENT: f"{position}/{count}/{own[0]}/{','.join(own[1:])}"}, self.limit)
        assert handoff is not None
        if index < len(self):
            self.append(self[index])  # the one it replaces, still to close
            self[index] = handoff
        else:
            self.append(handoff)
        return handoff

    def close(self) -> None:
        for handoff in self:
            handoff.close()
        for channel in self.supervisor:
            channel.close()


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Two workers (limit ``request.param``, else 2)."""
    workers = Workers(2, getattr(request, "param", 2))
    yield workers
    workers.close()


class _Held(asyncio.Protocol):
    """What a worker's listener does before the request head is complete: hold the transport."""

    def __init__(self, accepted: asyncio.Queue[asyncio.Transport]) -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.accepted.put_nowait(transport)  # type: ignore[arg-type]


def _document_owned_by(index: int) -> str:
    return next(name for name in (f"doc-{n}" for n in range(100))
                if owner_of(name, 2) == index)


def test_owner_is_stable_and_spread() -> None:
    owners = [owner_of(f"doc-{n}", 2) for n in range(200)]
    assert owners == [owner_of(f"doc-{n}", 2) for n in range(200)]
    assert 70 < sum(owners) < 130
    assert owner_of("é/ü\udcff", 3) in (0, 1, 2)  # any document name, even a lone surrogate


def test_environment_is_checked() -> None:
    assert Handoff.from_environ({}, 10) is None
    assert Handoff.from_environ({ENVIRONMENT: "0/1/3/4"}, 0) is None  # affinity off
    with pytest.raises(ValueError, match="index/count"):
        Handoff.from_environ({ENVIRONMENT: "2/2/5/6,7"}, 10)


@pytest.mark.parametrize("pair", [1], indirect=True)
@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_connection_moves_with_its_bytes_and_back(loop_name: str,
                                                     pair: Workers) -> None:
    first, second = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
        adopted: asyncio.Queue[tuple[socket.socket, bytes, int, str]] = asyncio.Queue()
        first.start(lambda sock, data, origin: adopted.put_nowait((sock, data, origin, "0")))
        second.start(lambda sock, data, origin: adopted.put_nowait((sock, data, origin, "1")))
        await eventually(lambda: first.ready == second.ready == [True, True],
                         "each worker told the other it reads its channel", timeout=5)
        server = await loop.create_server(lambda: _Held(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        document = _document_owned_by(1)
        head = f"GET /ws/fabric/{document} HTTP/1.1\r\n\r\n".encode() + b"\x82\x00early"

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await asyncio.wait_for(accepted.get(), 5)
        # accepted by worker 0, owned by worker 1: moved, closed here, nothing written
        assert first.route(transport, head, document, HERE, lambda _: 0)
        sock, data, origin, by = await asyncio.wait_for(adopted.get(), 5)
        assert (data, origin, by) == (head, 0, "1")
        assert transport.is_closing()
        # the same connection, both ways, with no EOF from the worker that let it go
        sock.setblocking(True)
        writer.write(b"later")
        await writer.drain()
        assert sock.recv(100) == b"later"
        sock.sendall(b"from worker 1")
        assert await asyncio.wait_for(reader.readexactly(13), 5) == b"from worker 1"

        # the owner has its limit (1) already: back to worker 0, to stay
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        held = await asyncio.wait_for(accepted.get(), 5)
        assert second.route(held, head, document, 0, lambda _: 1)
        back, data, origin, by = await asyncio.wait_for(adopted.get(), 5)
        assert (data, origin, by) == (head, RETURNED, "0")
        assert not first.route(held, head, document, RETURNED, lambda _: 0)  # served there
        back.setblocking(True)
        back.sendall(b"stayed")
        assert await asyncio.wait_for(reader2.readexactly(6), 5) == b"stayed"
        assert first.counts == {"sent": 1, "received": 1}
        assert second.counts == {"received": 1, "returned": 1}

        # one it owns stays; a head larger than a message stays
        assert not second.route(held, head, document, HERE, lambda _: 0)
        assert not first.route(held, b"x" * MAX_MESSAGE, document, HERE, lambda _: 0)
        for done in (sock, back):
            done.close()
        for stream in (writer, writer2):
            stream.close()
        server.close()

    _run(loop_name, main())


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_connections_stay_when_the_owner_is_not_reading(loop_name: str,
                                                        pair: Workers) -> None:
    """Not started (it never said it reads), stopped (it said it stopped), or overloaded (its
    channel is full): the connection stays, open, with the worker that accepted it."""
    first, second = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
        server = await loop.create_server(lambda: _Held(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        document = _document_owned_by(1)
        head = b"GET / HTTP/1.1\r\n\r\n" + b"x" * 60_000
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
        transports = [await asyncio.wait_for(accepted.get(), 5) for _ in clients]
        first.start(lambda sock, data, origin: None)
        assert not first.route(transports[0], head, document, HERE, lambda _: 0)  # not started
        adopted: list[socket.socket] = []
        second.start(lambda sock, data, origin: adopted.append(sock))
        await eventually(lambda: first.ready[1], "worker 1 ready", timeout=5)
        # no await between these: worker 1 cannot read meanwhile (one loop), and its channel
        # holds a few 60 KB heads only
        moved = [first.route(transport, head, document, HERE, lambda _: 0)
                 for transport in transports[1:]]
        assert True in moved and moved[-1] is False, moved
        await eventually(lambda: len(adopted) == moved.count(True), "the moved ones adopted",
                         timeout=5)
        second.stop()
        await eventually(lambda: not first.ready[1], "worker 1 said it stopped", timeout=5)
        kept = [transports[0], *(t for t, m in zip(transports[1:], moved, strict=True) if not m)]
        assert first.counts == {"sent": moved.count(True), "kept": len(kept)}
        for transport, (reader, _) in zip(transports, clients, strict=True):
            if transport in kept:
                assert not transport.is_closing()  # served here instead
                transport.write(b"still here")
                assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        for sock in adopted:
            sock.close()
        for _, writer in clients:
            writer.close()
        server.close()

    _run(loop_name, main())


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_worker_started_again_learns_who_reads(loop_name: str, pair: Workers) -> None:
    """Worker 0's READY went to worker 1's first process; the second learns it from the
    answer to its own READY, and connections flow both ways again."""
    first, second = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        adopted: asyncio.Queue[tuple[socket.socket, int]] = asyncio.Queue()
        first.start(lambda sock, data, origin: adopted.put_nowait((sock, 0)))
        second.start(lambda sock, data, origin: None)
        await eventually(lambda: first.ready == second.ready == [True, True], "both ready",
                         timeout=5)
        second.stop()
        await eventually(lambda: not first.ready[1], "worker 1 gone", timeout=5)
        again = pair.again(1)
        assert again.ready == [False, True]
        again.start(lambda sock, data, origin: adopted.put_nowait((sock, 1)))
        await eventually(lambda: first.ready[1] and again.ready[0], "both ready again",
                         timeout=5)
        accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
        server = await loop.create_server(lambda: _Held(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        head = b"GET / HTTP/1.1\r\n\r\n"
        writers = []
        for sender, owner in ((first, 1), (again, 0)):
            writers.append((await asyncio.open_connection("127.0.0.1", port))[1])
            transport = await asyncio.wait_for(accepted.get(), 5)
            assert sender.route(transport, head, _document_owned_by(owner), HERE,
                                lambda _: 0)
            sock, by = await asyncio.wait_for(adopted.get(), 5)
            assert by == owner
            sock.close()
        for writer in writers:
            writer.close()
        server.close()

    _run(loop_name, main())
