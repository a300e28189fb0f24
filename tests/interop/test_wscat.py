"""The README's wscat session, with the real npm wscat."""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

from tests.helpers import NODE_BIN, ServerProcess
from tests.polling import eventually_sync


def _messages(lines: list[str]) -> list[dict[str, Any]]:
    # Without a terminal wscat prints each received message on its own line (after any "> ").
    return [json.loads(line[line.index("{"):]) for line in list(lines) if "{" in line]


def test_readme_wscat_session() -> None:
    """wscat -c …/ws/fabric?documentId=test&clientID=test; sync → synced."""
    proc = ServerProcess(["--port", "0", "--store", "memory"]).start()
    wscat = subprocess.Popen(
        [str(NODE_BIN / "wscat"), "-c",
         f"ws://localhost:{proc.port}/ws/fabric?documentId=test&clientID=test"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert wscat.stdout is not None
        lines.extend(wscat.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wscat.stdin is not None
        eventually_sync(lambda: _messages(lines), "wscat's first message", timeout=20)
        wscat.stdin.write('{"type":"sync","documentId":"test"}\n')
        wscat.stdin.flush()
        eventually_sync(lambda: len(_messages(lines)) >= 2, "the answer to sync", timeout=10)
        wscat.terminate()
        wscat.wait(timeout=10)
        reader.join(timeout=5)
    finally:
        if wscat.poll() is None:
            wscat.kill()
            wscat.wait(timeout=10)
        reader.join(timeout=5)
        for pipe in (wscat.stdin, wscat.stdout):
            if pipe is not None:
                pipe.close()
        proc.stop()
    received = _messages(lines)
    kinds = [message["type"] for message in received]
    assert kinds[:2] == ["connected", "synced"], lines
    assert received[1]["documentId"] == "test"
