"""The process-level memory settings of ``captify-ws serve`` (captify_ws/memory.py, issue 13)."""

from __future__ import annotations

import gc

from captify_ws.memory import freeze_startup_objects
from tests.helpers import json_client, running_server


async def test_full_collections_skip_what_start_up_made() -> None:
    """Once a started server's objects are frozen, a full collection walks only what was made
    since (a few thousand objects instead of tens of thousands), and documents still work."""
    async with running_server("native") as srv:
        try:
            walked_before = len(gc.get_objects())
            frozen = freeze_startup_objects()
            assert frozen >= walked_before // 2 and len(gc.get_objects()) < walked_before // 10
            async with json_client(srv, "after-freeze") as writer, \
                    json_client(srv, "after-freeze") as reader:
                await writer.edit("still served")
                reader.apply(await reader.expect("update"))
                assert str(reader.text) == "still served"
        finally:
            gc.unfreeze()
