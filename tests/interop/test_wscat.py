"""The README's wscat session, with the real npm wscat."""

from __future__ import annotations

import json
import subprocess
import time

from tests.helpers import NODE_BIN, ServerProcess


def test_readme_wscat_session() -> None:
    """wscat -c …/ws/fabric?documentId=test&clientID=test; sync → synced."""
    proc = ServerProcess(["--port", "0", "--store", "memory"]).start()
    wscat = subprocess.Popen(
        [str(NODE_BIN / "wscat"), "-c",
         f"ws://localhost:{proc.port}/ws/fabric?documentId=test&clientID=test"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wscat.stdin is not None
        time.sleep(1.0)
        wscat.stdin.write('{"type":"sync","documentId":"test"}\n')
        wscat.stdin.flush()
        time.sleep(1.0)
        wscat.terminate()
        output, _ = wscat.communicate(timeout=10)
    finally:
        if wscat.poll() is None:
            wscat.kill()
        proc.stop()
    # Without a terminal wscat prints each received message on its own line (after any "> ").
    received = [json.loads(line[line.index("{"):]) for line in output.splitlines()
                if "{" in line]
    kinds = [message["type"] for message in received]
    assert kinds[:2] == ["connected", "synced"], output
    assert received[1]["documentId"] == "test"
