"""Documents per /ws/hocuspocus socket (CAPTIFY_WS_HOCUSPOCUS_MAX_DOCUMENTS): past the bound a
document gets PermissionDenied with the README's reason, the socket and its other documents
carry on, and a document closed by its provider frees its place."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from captify_ws.protocol import hocuspocus as hp
from tests.helpers import hocuspocus_providers, running_server
from tests.test_hocuspocus_hostile import next_frame, token_frame, update_frame
from tests.test_hocuspocus_sync_answers import _update

REASON = "too many documents on this connection"


async def test_real_providers_past_the_documents_bound_are_refused_alone() -> None:
    """Three v4 providers on one shared socket with a bound of two: the third is refused
    (authenticationFailed with the reason), the two others sync and edit, the socket stays."""
    async with running_server(hocuspocus_max_documents=2) as srv, \
            hocuspocus_providers() as repl:
        url = f"{srv.ws}/ws/hocuspocus"
        await repl.call("socket", name="s", url=url, impl="v4")
        for name in ("one", "two", "three"):
            await repl.call("open", name=name, socket="s", doc=f"bound-{name}", impl="v4",
                            token="")
            if name != "three":
                await repl.call("waitSynced", name=name)
        refused = await repl.call("waitState", name="three", field="failures", length=1)
        # (its Sync and Awareness frames that follow the Token are refused the same way)
        assert set(refused["failures"]) == {REASON} and not refused["authenticated"]
        await repl.call("open", name="peer", url=url, doc="bound-two", impl="v3", token="")
        await repl.call("insert", name="two", text="still editing;")
        await repl.call("waitUntil", name="peer", field="text", equals="still editing;")
        await repl.call("waitUnsynced0", name="two")
        assert (await repl.call("socketStatus", socket="s"))["closes"] == []
        assert srv.server.get_connection_count(handler="hocuspocus") == 2


async def test_a_closed_document_frees_its_place_and_refusals_repeat() -> None:
    """Raw frames, bound of three: the fourth document is refused each time it asks while
    three are open; after the provider closes one (CLOSE), the fourth opens, and every open
    document keeps receiving updates."""
    async with running_server(hocuspocus_max_documents=3) as srv:
        async with connect(f"{srv.ws}/ws/hocuspocus") as ws:
            for index in range(3):
                await ws.send(token_frame(f"d{index}", ""))
                assert await next_frame(ws, f"d{index}") == \
                    hp.FrameEncoder(f"d{index}").authenticated(read_only=False)
            for _ in range(2):
                await ws.send(token_frame("d3", ""))
                assert await next_frame(ws, "d3") == \
                    hp.FrameEncoder("d3").permission_denied(REASON)
            await ws.send(hp.FrameEncoder("d0").prefix + b"\x07")  # the provider detaches d0
            await ws.send(token_frame("d3", ""))
            assert await next_frame(ws, "d3") == \
                hp.FrameEncoder("d3").authenticated(read_only=False)
            await ws.send(update_frame("d3", _update("opened;")))
            await next_frame(ws, "d3", types=(hp.MESSAGE_SYNC_STATUS,))
            for name in ("d1", "d2", "d3"):
                await srv.server.apply_update(name, _update(f"to {name};"))
                async with asyncio.timeout(5):
                    while True:
                        frame = await ws.recv()
                        assert isinstance(frame, bytes)
                        if frame.startswith(hp.FrameEncoder(name).prefix) and \
                                f"to {name};".encode() in frame:
                            break
