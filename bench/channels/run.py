"""The channel benchmark: captify-ws channels beside Socket.IO 4.8, in one invocation.

    .venv/bin/python bench/channels/run.py                  # 3 repeats (about 4 minutes)
    .venv/bin/python bench/channels/run.py --repeats 1 --subscribers 200

Scenarios (bench/channels/loadgen.mjs): fan-out of 200 publications at 20/s to 1,000
subscribers of one channel (Socket.IO: one room), and recovery of 1,000 publications missed
by a subscriber (Socket.IO: connection-state recovery). Each run starts ONE fresh server pinned
to CPU 0 (captify-ws: `serve --store memory`; Socket.IO: bench/channels/socketio-server.mjs)
and the load generator on CPU 1; targets are interleaved within each repeat, and the table
shows medians. Results are appended to bench/results/channels-<date>.jsonl and the table is
written to docs/benchmarks.md between the channel-benchmark markers. Needs `npm ci --prefix
bench/channels` (done on first use) and a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
CAPTIFY = str(ROOT / ".venv" / "bin" / "captify-ws")
BEGIN, END = "<!-- channel-benchmark:begin -->", "<!-- channel-benchmark:end -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_server(target: str, port: int) -> subprocess.Popen[bytes]:
    if target == "captify":
        command = [CAPTIFY, "serve", "--port", str(port), "--store", "memory", "--api-key",
                   "bench", "--log-level", "warning"]
    else:
        command = ["node", str(HERE / "socketio-server.mjs"), str(port)]
    return subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run_once(target: str, scenario: list[str]) -> dict[str, Any]:
    port = free_port()
    server = start_server(target, port)
    try:
        wait_port(port, server)
        out = subprocess.run(
            ["taskset", "-c", "1", "node", str(HERE / "loadgen.mjs"), "--target", target,
             "--url", f"http://127.0.0.1:{port}", "--server-pid", str(server.pid), *scenario],
            check=True, capture_output=True, text=True, timeout=300).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def pick(target: str, scenario: str) -> list[dict[str, Any]]:
        return [r for r in results if r["target"] == target and r["scenario"] == scenario]

    fan = {t: pick(t, "fanout") for t in ("captify", "socketio")}
    rec = {t: pick(t, "recovery") for t in ("captify", "socketio")}
    cpu = {t: median([r["server_cpu_us_per_copy"] for r in fan[t]]) for t in fan}
    p99 = {t: median([r["latency_ms"]["p99"] for r in fan[t]]) for t in fan}
    p50 = {t: median([r["latency_ms"]["p50"] for r in fan[t]]) for t in fan}
    ms = {t: median([r["ms"] for r in rec[t]]) for t in rec}
    size = {t: median([r["bytes"] for r in rec[t]]) for t in rec}
    rcpu = {t: median([r["server_cpu_ms"] for r in rec[t]]) for t in rec}
    missing = {t: sum(r["copies_missing"] for r in fan[t]) for t in fan}
    lost = {t: sum(r["missed"] - r["received"] for r in rec[t]) for t in rec}
    runs = len(fan["captify"])
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "bench/channels/run.py " + " ".join(sys.argv[1:])
    lines = [
        BEGIN,
        f"### Channels beside Socket.IO 4.8 ({stamp}, medians of {runs} interleaved runs)",
        "",
        f"Command: `.venv/bin/python {command.strip()}`. Fan-out: {args.subscribers} "
        f"subscribers of one channel (Socket.IO: one room), {args.publications} publications "
        f"at {args.rate}/s (captify-ws: `POST /api/v1/publish`; Socket.IO: an emit that the "
        "server sends with `io.to(room).emit`); server CPU from the first publication until "
        "every copy arrived, per copy delivered; latency at 50 probe subscribers. Recovery: "
        f"a subscriber misses {args.missed} publications and comes back (captify-ws: `since`; "
        "Socket.IO: connection-state recovery). Server pinned to CPU 0, lean `ws` clients on "
        "CPU 1 (bench/channels/loadgen.mjs).",
        "",
        "| | captify-ws | Socket.IO 4.8.1 | ratio |",
        "|---|---|---|---|",
        f"| fan-out: server CPU per copy (µs) | {cpu['captify']} | {cpu['socketio']} | "
        f"{cpu['captify'] / cpu['socketio']:.2f}× |",
        f"| fan-out: latency p50 / p99 (ms) | {p50['captify']} / {p99['captify']} | "
        f"{p50['socketio']} / {p99['socketio']} | p99 {p99['captify'] / p99['socketio']:.2f}× |",
        f"| fan-out: copies missing | {missing['captify']} | {missing['socketio']} | |",
        f"| recovery of {args.missed}: time to the last one (ms) | {ms['captify']} | "
        f"{ms['socketio']} | {ms['captify'] / ms['socketio']:.2f}× |",
        f"| recovery: bytes received | {int(size['captify'])} | {int(size['socketio'])} | "
        f"{size['captify'] / size['socketio']:.2f}× |",
        f"| recovery: server CPU (ms) | {rcpu['captify']} | {rcpu['socketio']} | |",
        f"| recovery: publications not recovered | {lost['captify']} | {lost['socketio']} | |",
        "",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publications", type=int, default=200)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("taskset is needed (util-linux)", file=sys.stderr)
        return 2
    if not (HERE / "node_modules" / "socket.io").is_dir():
        subprocess.run(["npm", "ci", "--prefix", str(HERE), "--no-audit", "--no-fund",
                        "--loglevel=error"], check=True)
    load = os.getloadavg()[0]
    if load > 1.5:
        print(f"warning: load average {load:.2f}; figures need a quiet machine", file=sys.stderr)
    fanout = ["--scenario", "fanout", "--subscribers", str(args.subscribers), "--publications",
              str(args.publications), "--rate", str(args.rate), "--probes", "50"]
    recovery = ["--scenario", "recovery", "--missed", str(args.missed)]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"channels-{datetime.datetime.now():%Y-%m-%dT%H%M}.jsonl"
    results = []
    for repeat in range(args.repeats):
        for scenario in (fanout, recovery):
            for target in ("captify", "socketio"):
                result = run_once(target, scenario)
                result["repeat"] = repeat
                results.append(result)
                with out.open("a") as file:
                    file.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    rendered = table(results, args)
    print(rendered)
    if not args.no_docs:
        text = DOCS.read_text()
        if BEGIN in text:
            text = text[:text.index(BEGIN)] + rendered + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Channels\n\n" + rendered + "\n"
        DOCS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
