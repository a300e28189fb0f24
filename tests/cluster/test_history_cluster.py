"""History across instances on the machine's Redis and PostgreSQL: a restore on one instance
reaches the y-websocket clients of every instance; versions are the shared store's."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.test_cluster import instances
from tests.helpers import ProviderRepl, providers
from tests.polling import eventually
from tests.services import fresh_database, require_redis

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture
def shared_store() -> Iterator[str]:
    require_redis()
    with fresh_database() as url:
        yield url


async def _texts(repl: ProviderRepl, names: list[str]) -> list[str]:
    return [(await repl.call("snapshot", name=name))["text"] for name in names]


async def test_restore_on_one_instance_reaches_clients_of_both(shared_store: str) -> None:
    """Clients on two instances edit; a version is taken on one; after more edits a restore
    on the other brings every client back to the version; both list the same versions; the
    undo, from the first instance, brings the later edit back everywhere (the edit was
    accepted by the other instance, so it may not be in the store when the restore starts)."""
    with instances(2, shared_store, "redis://127.0.0.1:6379/0", "--version-idle-s", "0") \
            as (one, two):
        async with providers() as repl, httpx.AsyncClient(headers=AUTH, timeout=30) as http:
            names = ["a", "b"]
            for name, proc in zip(names, (one, two), strict=True):
                await repl.call("open", name=name, url=f"{proc.ws}/ws/fabric", doc="shared")
                await repl.call("waitSynced", name=name)
            await repl.call("insert", name="a", text="kept ")
            await repl.call("insert", name="b", text="also kept ")

            async def same() -> list[str]:
                texts = await _texts(repl, names)
                return texts if texts[0] == texts[1] and len(texts[0]) == 15 else []
            versioned = (await eventually(same, "both clients converged"))[0]
            assert (await http.post(f"{one.http}/api/v1/documents/shared/versions",
                                    json={"name": "v1"})).status_code == 201
            await repl.call("insert", name="a", text="dropped by the restore")

            async def edited() -> bool:
                return all("dropped" in text for text in await _texts(repl, names))
            await eventually(edited, "the later edit everywhere")
            restored = await http.post(f"{two.http}/api/v1/documents/shared/versions/1/restore")
            assert restored.status_code == 201, restored.text

            async def back() -> bool:
                return await _texts(repl, names) == [versioned, versioned]
            await eventually(back, "both clients at the version", timeout=15)
            listed = [(await http.get(f"{proc.http}/api/v1/documents/shared/versions")).json()
                      for proc in (one, two)]
            assert listed[0] == listed[1]
            assert [v["kind"] for v in listed[0]["versions"]] == ["restore", "auto", "named"]
            undo = await http.post(f"{one.http}/api/v1/documents/shared/versions/"
                                   f"{restored.json()['version'] - 1}/restore")
            assert undo.status_code == 201, undo.text
            await eventually(edited, "the undone restore everywhere", timeout=15)
