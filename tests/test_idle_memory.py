"""What an idle connection costs the server (issue 20.5: at most 10 KB per connection at
10,000, measured by bench/run.py's idle set). Here: the server's resident memory, read from
/proc, grows by less than 12 KB per idle y-websocket connection on a document of its own
(17 KB each before the handshake's headers, an unwritten document's pycrdt Doc and per-socket
bound methods were dropped), and those documents still work when someone writes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pycrdt import Doc, Text

from tests.attacks import client_frame, read_frame, upgrade
from tests.helpers import ServerProcess
from tests.polling import eventually

#: y-websocket messages (lib0 varuints): sync step 1 with an empty state vector, the empty
#: sync step 2 that answers the server's step 1
STEP1_EMPTY = b"\x00\x00\x01\x00"
STEP2_EMPTY = b"\x00\x01\x02\x00\x00"
CONNECTIONS = 1000
WARM_UP = 50
KB_PER_CONNECTION = 12


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _idle_viewer(port: int, doc: str) -> asyncio.StreamWriter:
    """A lean y-websocket client (as ../shared/bench's): synced, then silent."""
    reader, writer = await upgrade(port, doc)
    writer.write(client_frame(0x2, STEP1_EMPTY) + client_frame(0x2, STEP2_EMPTY))
    while True:  # until the server's sync step 2 (its answer to our step 1)
        opcode, payload = await read_frame(reader)
        if opcode == 0x2 and payload[:2] == b"\x00\x01":
            return writer


async def _open(port: int, prefix: str, count: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 100):
        writers += await asyncio.gather(*(_idle_viewer(port, f"{prefix}-{index}")
                                          for index in range(start, min(count, start + 100))))
    return writers


async def test_an_idle_connection_on_its_own_document_costs_under_12_kb() -> None:
    """1,000 idle viewers, each on its own document: RSS grows < 12 KB per connection; then
    one of those documents is written and a new viewer receives the text."""
    proc = ServerProcess(["--port", "0", "--store", "memory", "--log-level", "warning",
                          "--document-create-rate", "0"]).start()
    writers: list[asyncio.StreamWriter] = []
    try:
        assert proc.process is not None
        pid = proc.process.pid
        writers += await _open(proc.port, "warm", WARM_UP)  # imports, first allocations
        before = _rss_kb(pid)
        writers += await _open(proc.port, "idle", CONNECTIONS)
        after = _rss_kb(pid)
        per_connection = (after - before) / CONNECTIONS
        assert per_connection < KB_PER_CONNECTION, f"{per_connection:.1f} KB per connection"

        author = Doc()
        author["text"] = text = Text()
        text += "written after the idle time"
        update = author.get_update()
        writer = writers[-1]  # the viewer of idle-999 writes to its document
        writer.write(client_frame(0x2, b"\x00\x02" + bytes([len(update)]) + update))
        await writer.drain()

        async def received() -> bool:
            reader, late = await upgrade(proc.port, f"idle-{CONNECTIONS - 1}")
            try:
                late.write(client_frame(0x2, STEP1_EMPTY))
                while True:
                    opcode, payload = await read_frame(reader)
                    if opcode == 0x2 and payload[:2] == b"\x00\x01":
                        reader_doc = Doc()
                        reader_doc["text"] = got = Text()
                        reader_doc.apply_update(payload[3:] if payload[2] < 0x80
                                                else payload[4:])
                        return str(got) == "written after the idle time"
            finally:
                late.transport.abort()

        await eventually(received, "a new viewer to receive what was written")
    finally:
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        proc.stop()
