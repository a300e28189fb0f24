"""Hocuspocus providers across a server crash and restart on SQLite: they reconnect by
themselves, re-authenticate every document of their socket, and nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from pycrdt import Doc, Text

from tests.helpers import ProviderRepl, ServerProcess, free_port, hocuspocus_providers
from tests.polling import eventually

DOCS = ("crash-a", "crash-b")


async def _stored_text(http: str, document_id: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{http}/api/v1/documents/{document_id}",
                                  headers={"Authorization": "Bearer k",
                                           "Accept": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    doc: Doc = Doc()
    doc.apply_update(answer.content)
    return str(doc.get("text", type=Text))


async def _texts(repl: ProviderRepl, names: list[str]) -> list[str]:
    return [(await repl.call("snapshot", name=n))["text"] for n in names]


async def test_providers_reconnect_after_kill_9_and_nothing_is_lost(tmp_path: Path) -> None:
    """kill -9 mid-editing, edits while the server is down, restart on the same port: every
    provider (v3 and v4 sockets carrying two documents each) reconnects and converges, and the
    stored documents hold every edit."""
    port = free_port()
    args = ["--port", str(port), "--store", f"sqlite:///{tmp_path / 'docs.db'}",
            "--api-key", "k", "--room-grace-s", "0.2"]
    server = ServerProcess(args).start()
    try:
        async with hocuspocus_providers() as repl:
            url = f"{server.ws}/ws/hocuspocus"
            names = []
            for impl in ("v3", "v4"):
                await repl.call("socket", name=impl, url=url, impl=impl)
                for doc in DOCS:
                    names.append(f"{impl}/{doc}")
                    await repl.call("open", name=names[-1], socket=impl, doc=doc, impl=impl,
                                    token="")
            await asyncio.gather(*(repl.call("waitSynced", name=n) for n in names))
            for name in names:
                await repl.call("insert", name=name, text=f"<{name} before>")
            await asyncio.gather(*(repl.call("waitUnsynced0", name=n) for n in names))
            for name in names:  # in flight when the server dies: maybe stored, maybe not
                await repl.call("insert", name=name, text=f"<{name} racing>")
            server.kill9()
            for name in names:  # made while the server is down
                await repl.call("insert", name=name, text=f"<{name} offline>")
            server = ServerProcess(args).start()
            await asyncio.gather(*(repl.call("waitUnsynced0", name=n, timeout=30000)
                                   for n in names))
            for doc in DOCS:
                group = [f"{impl}/{doc}" for impl in ("v3", "v4")]
                async def same(group: list[str] = group) -> list[str]:
                    texts = await _texts(repl, group)
                    assert len(set(texts)) == 1, texts
                    return texts

                texts = await eventually(same, f"{doc} to converge", timeout=20, interval=0.1)
                for name in group:
                    for phase in ("before", "racing", "offline"):
                        assert f"<{name} {phase}>" in texts[0]
                assert await _stored_text(server.http, doc) == texts[0]
            sockets = [await repl.call("socketStatus", socket=impl) for impl in ("v3", "v4")]
            assert all(s["status"] == "connected" and s["closes"] for s in sockets), sockets
    finally:
        server.stop()
    restarted = ServerProcess(args).start()  # what was stored survives a clean restart too
    try:
        for doc in DOCS:
            stored = await _stored_text(restarted.http, doc)
            assert all(f"<{impl}/{doc} offline>" in stored for impl in ("v3", "v4"))
    finally:
        restarted.stop()
