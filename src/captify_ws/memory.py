"""Memory a server freed goes back to the operating system (glibc's malloc).

glibc serves a large allocation with its own ``mmap`` (returned to the system on ``free``) only
while it is above ``M_MMAP_THRESHOLD``, and raises that threshold to the size of every such
block freed (up to 32 MiB). After a burst of large replies (a 10 MB document synced to clients
that do not read) every later large block comes from the heap instead, and the heap keeps its
pages when they are freed: the process stays at its peak after the clients are gone. A fixed
threshold keeps large blocks on ``mmap``. ``captify-ws serve`` calls
:func:`keep_large_blocks_returnable` at start; an application that embeds captify-ws decides
for its own process.

The cyclic garbage collector's full collections walk every tracked object: after start-up
(modules, the server, its settings and handlers) about 75,000, 40-90 ms each on a busy 2-core
machine, during which no connection is served. ``captify-ws serve`` calls
:func:`freeze_startup_objects` once it listens: what is alive then lives as long as the process
and moves to the permanent generation, which collections skip.

Small blocks freed in the middle of the heap stay with the process too: glibc returns heap pages
only from its top. After an attack (thousands of connections, documents loaded and unloaded) a
server measured +54 MB for good with everything freed; ``malloc_trim(0)`` gave 38 MB of it back
in 2 ms (0.15 ms when there is nothing to give). ``captify-ws serve`` runs
:func:`trim_heap_every` for its process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from typing import Final

logger = logging.getLogger("captify_ws.memory")

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

#: Allocations at least this large are mapped on their own and unmapped when freed.
MMAP_THRESHOLD_BYTES: Final = 256 * 1024


#: How often ``captify-ws serve`` gives free heap pages back (seconds).
TRIM_INTERVAL_S: Final = 5.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def trim_heap() -> bool:
    """Give the free pages of every malloc heap back to the system (glibc's ``malloc_trim(0)``,
    which releases free pages in the middle of a heap too); ``False`` without glibc. ctypes
    releases the GIL for the call."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


async def trim_heap_every(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Forever (until cancelled): :func:`trim_heap` in a worker thread every ``interval_s``
    seconds, so that memory freed after a burst goes back to the system within that time."""
    if _libc() is None or not hasattr(_libc(), "malloc_trim"):
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim_heap)


def keep_large_blocks_returnable(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (and trim the heap above 1 MiB); ``False`` without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 1 << 20))
    if not done:
        logger.debug("mallopt refused the mmap threshold")
    return done


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now to the collector's permanent generation
    (``gc.freeze``), so that later full collections walk only what was made since; returns how
    many objects were frozen. Objects frozen are never collected: call it once, after start-up,
    when what is alive is what the process keeps."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
