"""An agent in another process, over HTTP only: it streams a run (NDJSON events) and types
into a document through an agent session (NDJSON text pieces) until it is killed.

Usage: python agent_producer.py <base-url> <api-key> <run-id> <document-id>; prints the
session's Yjs client id, then "streaming" once both streams are under way.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator

import httpx


def run_lines(started: threading.Event) -> Iterator[bytes]:
    yield json.dumps({"event": "run.started", "data": {"owner": "u1"}}).encode() + b"\n"
    i = 0
    while True:
        yield json.dumps({"event": "token",
                          "data": {"message_id": "m1", "delta": f"{i} "}}).encode() + b"\n"
        started.set()
        i += 1
        time.sleep(0.02)


def text_lines(started: threading.Event) -> Iterator[bytes]:
    yield b'{"anchor": 0}\n'
    i = 0
    while True:
        yield json.dumps({"text": f"[{i}]"}).encode() + b"\n"
        started.set()
        i += 1
        time.sleep(0.02)


def main() -> None:
    base, key, run_id, document_id = sys.argv[1:5]
    auth = {"Authorization": f"Bearer {key}"}
    opened = httpx.post(f"{base}/api/v1/agent/sessions", headers=auth,
                        json={"document_id": document_id, "name": "Remote agent"}).json()
    print(opened["client_id"], flush=True)
    ndjson = {**auth, "Content-Type": "application/x-ndjson"}
    run_started, text_started = threading.Event(), threading.Event()
    threading.Thread(target=httpx.post, daemon=True,
                     args=(f"{base}/api/v1/agent/runs/{run_id}/events",),
                     kwargs={"content": run_lines(run_started), "headers": ndjson,
                             "timeout": None}).start()
    threading.Thread(target=httpx.post, daemon=True,
                     args=(f"{base}/api/v1/agent/sessions/{opened['session_id']}/insert",),
                     kwargs={"content": text_lines(text_started), "headers": ndjson,
                             "timeout": None}).start()
    run_started.wait()
    text_started.wait()
    print("streaming", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
