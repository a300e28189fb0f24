"""The process-level memory settings of ``captify-ws serve`` (captify_ws/memory.py, issue 13)."""

from __future__ import annotations

import gc
import subprocess
import sys

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


_FRAGMENTED = """
import sys
from captify_ws.memory import trim_heap
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1048576
# 64 KiB blocks come from malloc's heap (below the mmap threshold), as read buffers, frames and
# documents' encodings do; every other one freed: those pages are not at the heap's top
kept = [bytearray(64 * 1024) for _ in range(2000)]
del kept[::2]
before = rss_mb()
assert trim_heap()
print(before, rss_mb())
"""


def test_trim_heap_gives_freed_pages_in_the_middle_of_the_heap_back() -> None:
    """Half of 2,000 blocks of 64 KiB freed, interleaved with live ones: the process keeps the
    pages until :func:`trim_heap`, which gives at least 20 MB back (in a fresh interpreter, so
    that the figure is the heap's)."""
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    before, after = map(float, out.split())
    assert before - after > 20, (before, after)
