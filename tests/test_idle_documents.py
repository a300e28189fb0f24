"""Documents in their grace period are bounded together (``max_idle_document_bytes``, issue 13).

A document stays loaded ``room_grace_s`` after its last client left. One client filling a new
document after another kept rate x grace of them loaded (12 documents at the 32 MB quota, +266
MB for that attack alone). Past the bound, those waiting longest unload at once, stored in full.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest

from captify_ws.rooms.document import DocumentRoom
from tests.attacks import random_letters
from tests.helpers import JsonClient, json_client, running_server
from tests.polling import eventually

TEXT = 200_000  # characters each document is filled with
DOCUMENTS = 8
BUDGET = 2 << 20


async def _yjs_update(client: JsonClient, document: str, text: str) -> None:
    await client.edit(text)
    await client.send({"type": "sync", "documentId": document})
    await client.expect("synced")  # the update was applied before this answer


async def _steps(client: JsonClient, document: str, text: str) -> None:
    await client.send({"type": "steps", "documentId": document, "data": {
        "version": 0, "clientID": "filler", "steps": [
            {"stepType": "replace", "from": 1, "to": 1,
             "slice": {"content": [{"type": "text", "text": text}]}}]}})
    await client.expect("steps")


async def _yjs_text(client: JsonClient, document: str) -> str:
    await client.sync()
    return str(client.text)


async def _steps_text(client: JsonClient, document: str) -> str:
    await client.send({"type": "doc", "documentId": document})
    return json.dumps((await client.expect("doc"))["data"]["doc"])


FILL: dict[str, tuple[Callable[[JsonClient, str, str], Awaitable[None]],
                      Callable[[JsonClient, str], Awaitable[str]]]] = {
    "Yjs updates": (_yjs_update, _yjs_text),
    "ProseMirror steps": (_steps, _steps_text),
}


def _waiting_cost(rooms: dict[str, DocumentRoom]) -> int:
    return sum(room.cost for room in rooms.values() if room.idle)


@pytest.mark.parametrize("how", list(FILL))
async def test_documents_left_alone_are_bounded_together(how: str) -> None:
    """Eight documents filled and left, with a 30 s grace and a 2 MiB bound: the documents
    waiting hold no more than the bound (plus the one just left), the others unloaded at once,
    and every document reloads whole."""
    fill, read = FILL[how]
    async with running_server(room_grace_s=30, max_idle_document_bytes=BUDGET) as srv:
        rooms = srv.server.rooms.rooms
        costs = []
        for number in range(DOCUMENTS):
            document = f"idle-{number}"
            async with json_client(srv, document) as client:
                await fill(client, document, random_letters(TEXT, seed=number))
                costs.append(rooms[document].cost)
            await eventually(lambda: _waiting_cost(rooms) <= BUDGET + max(costs),
                             "the documents waiting to fit the bound")
        assert sum(costs) > 2 * BUDGET  # without the bound all eight would stay 30 s
        assert len(rooms) < DOCUMENTS
        for number in range(DOCUMENTS):
            document = f"idle-{number}"
            async with json_client(srv, document) as client:
                assert random_letters(TEXT, seed=number) in await read(client, document)
