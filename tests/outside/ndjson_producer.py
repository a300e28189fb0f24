"""A producer in another process: streams an agent run as NDJSON over HTTP until killed.

Usage: python ndjson_producer.py <base-url> <api-key> <run-id>; prints "streaming" once the
first token line is sent.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import httpx


def lines(run_id: str) -> Iterator[bytes]:
    yield json.dumps({"event": "run.started", "data": {"owner": "u1"}}).encode() + b"\n"
    yield json.dumps({"event": "message.started", "data": {"message_id": "m1"}}).encode() + b"\n"
    i = 0
    while True:
        yield json.dumps({"event": "token",
                          "data": {"message_id": "m1", "delta": f"{i} "}}).encode() + b"\n"
        if i == 0:
            print("streaming", flush=True)
        i += 1
        time.sleep(0.01)


def main() -> None:
    base, key, run_id = sys.argv[1:4]
    httpx.post(f"{base}/api/v1/agent/runs/{run_id}/events", content=lines(run_id),
               headers={"Authorization": f"Bearer {key}",
                        "Content-Type": "application/x-ndjson"}, timeout=None)


if __name__ == "__main__":
    main()
