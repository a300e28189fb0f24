"""Sync answers on /ws/hocuspocus: built once per document state and reused for every provider
that asks the same (the same bytes), rebuilt after a change, and charged against the rate
limit by their size."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pycrdt import Doc, Text, write_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from captify_ws.errors import CloseCode
from captify_ws.protocol import hocuspocus as hp
from captify_ws.protocol import statevector
from captify_ws.ydoc import YDoc
from tests.helpers import RunningServer, hocuspocus_providers, running_server


def _update(text: str, client_id: int | None = None) -> bytes:
    doc: Doc[Any] = Doc() if client_id is None else Doc(client_id=client_id)
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


def _text_of(*updates: bytes) -> str:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("text", type=Text))


def _payload(frame: bytes, address: str) -> bytes:
    """The Yjs bytes of a Sync Step1/Step2 frame for ``address``."""
    prefix = hp.FrameEncoder(address).prefix
    assert frame.startswith(prefix) and frame[len(prefix)] == 0, frame[:40]
    event = hp.decode(frame)
    assert isinstance(event, hp.SyncStep1 | hp.SyncStep2), event
    return event.state_vector if isinstance(event, hp.SyncStep1) else event.update


@contextlib.asynccontextmanager
async def opened(srv: RunningServer, address: str) -> AsyncIterator[ClientConnection]:
    """A raw socket with ``address`` authenticated (Token "")."""
    async with connect(f"{srv.ws}/ws/hocuspocus", max_size=None, max_queue=None) as ws:
        await ws.send(write_message(address.encode()) + b"\x02\x00" + write_message(b""))
        async with asyncio.timeout(5):
            while True:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                if frame == hp.FrameEncoder(address).authenticated(False):
                    break
        yield ws


async def sync(ws: ClientConnection, address: str, vector: bytes) -> tuple[bytes, bytes]:
    """Send Step1 with ``vector``; the server's Step1 and Step2 frames."""
    await ws.send(hp.FrameEncoder(address).sync_step1(vector))
    frames: list[bytes] = []
    async with asyncio.timeout(5):
        while len(frames) < 2:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            if isinstance(hp.decode(frame), hp.SyncStep1 | hp.SyncStep2) and \
                    frame.startswith(hp.FrameEncoder(address).prefix):
                frames.append(frame)  # updates relayed meanwhile and keepalives skipped
    return frames[0], frames[1]


def _random_vector(rng: random.Random) -> bytes:
    """A made-up state vector: clients no document here has, at any clock."""
    return statevector.encode({rng.randrange(10**6, 2**32): rng.randrange(1, 10**6)
                               for _ in range(rng.randrange(1, 6))})


async def test_fresh_and_made_up_state_vectors_share_one_answer_until_a_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty providers opening one document, fresh or with state vectors of clients the
    document never saw, get byte-identical Step1/Step2 frames holding the whole document, from
    one encoding; after a change the next one gets the new state; a state vector the document
    knows gets what it lacks."""
    encodes: list[bytes | None] = []
    original = YDoc.encode

    def counting(self: YDoc, state_vector: bytes | None = None) -> bytes:
        encodes.append(state_vector)
        return original(self, state_vector)

    monkeypatch.setattr(YDoc, "encode", counting)
    rng = random.Random(16)
    async with running_server() as srv:
        first = _update("shared text;", client_id=7)
        await srv.server.apply_update("answers", first)
        answers: list[tuple[bytes, bytes]] = []
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(opened(srv, "answers"))
                       for _ in range(30)]
            encodes.clear()
            for index, ws in enumerate(sockets):
                vector = statevector.EMPTY if index % 2 else _random_vector(rng)
                answers.append(await sync(ws, "answers", vector))
            assert len(set(answers)) == 1
            step1, step2 = answers[0]
            assert _text_of(_payload(step2, "answers")) == "shared text;"
            assert statevector.decode(_payload(step1, "answers")) == {7: 12}
            assert len(encodes) <= 1  # one encoding for thirty answers (none when cached)

            await srv.server.apply_update("answers", _update("more;", client_id=8))
            step1_after, step2_after = await sync(sockets[0], "answers", _random_vector(rng))
            assert statevector.decode(_payload(step1_after, "answers")) == {7: 12, 8: 5}
            assert sorted(_text_of(_payload(step2_after, "answers")).split(";")) == \
                ["", "more", "shared text"]
            # Knowing client 7 entirely: only client 8's text is missing.
            _, partial = await sync(sockets[1], "answers", statevector.encode({7: 12}))
            assert _text_of(first, _payload(partial, "answers")) in \
                ("shared text;more;", "more;shared text;")
            assert _payload(partial, "answers") != _payload(step2_after, "answers")


async def test_real_providers_converge_with_shared_answers() -> None:
    """Providers of the three versions open a document one after another while it changes:
    each gets the state as of its Step1 (no stale cached answer) and all converge."""
    async with running_server() as srv, hocuspocus_providers() as repl:
        url = f"{srv.ws}/ws/hocuspocus"
        names = []
        for round_ in range(4):
            for impl in ("v2", "v3", "v4"):
                name = f"{impl}-{round_}"
                await repl.call("open", name=name, url=url, doc="rounds", impl=impl,
                                token=None if impl == "v2" else "")
                await repl.call("waitSynced", name=name)
                await repl.call("insert", name=name, text=f"[{name}]")
                names.append(name)
        for name in names:
            for other in names:
                await repl.call("waitUntil", name=name, field="text", contains=f"[{other}]")


async def test_sync_answers_count_against_the_rate_limit_by_size() -> None:
    """A socket asking again and again for a large document is closed with 4429: four small
    Step1 frames are within its burst as messages, but each answer (256 KiB) costs 16 more;
    another socket on the same document is not disturbed."""
    async with running_server(message_rate=5, message_burst=40,
                              message_cost_bytes=16 << 10) as srv:
        big = _update("x" * (256 << 10))
        await srv.server.apply_update("large", big)
        async with opened(srv, "large") as greedy, opened(srv, "large") as honest:
            _, step2 = await sync(honest, "large", statevector.EMPTY)
            assert len(_text_of(_payload(step2, "large"))) == 256 << 10
            for _ in range(4):  # 5 messages: a fifth of the burst for small ones
                with contextlib.suppress(ConnectionClosed):
                    await greedy.send(hp.FrameEncoder("large").sync_step1(statevector.EMPTY))
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await greedy.recv()
            assert greedy.close_code == CloseCode.RATE_LIMITED
            await srv.server.apply_update("large", _update("still here"))
            async with asyncio.timeout(5):
                while True:
                    frame = await honest.recv()
                    assert isinstance(frame, bytes)
                    if b"still here" in frame:
                        break
