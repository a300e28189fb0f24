"""The agent benchmark: 1,000 subscribers of one agent run, tokens coalesced by agent_run()
(the defaults: 50 ms or 32 tokens) and not (one publication per token).

    .venv/bin/python bench/agent/run.py                    # 2 repeats (about 2 minutes)
    .venv/bin/python bench/agent/run.py --subscribers 200 --tokens 500 --repeats 1

Each run starts ONE fresh server pinned to CPU 0 (bench/agent/server.py: captify-ws with an
in-process producer) and the load generator on CPU 1 (bench/agent/loadgen.mjs: lean `ws`
subscribers on /ws/agent). A run produces --tokens tokens at --rate per second; every
subscriber must receive every token and run.completed. Results go to
bench/results/agent-<date>.jsonl and the table to docs/benchmarks.md between the
agent-benchmark markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
PYTHON = str(ROOT / ".venv" / "bin" / "python")
BEGIN, END = "<!-- agent-benchmark:begin -->", "<!-- agent-benchmark:end -->"
#: name → (agent_coalesce_tokens, agent_coalesce_ms)
MODES = {"coalesced": (32, 50.0), "per token": (1, 50.0)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
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


def run_once(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    tokens, ms = MODES[mode]
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", PYTHON, str(HERE / "server.py"), str(port),
                               str(tokens), str(ms)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_port(port, server)
        out = subprocess.run(
            ["taskset", "-c", "1", "node", str(HERE / "loadgen.mjs"), "--url",
             f"http://127.0.0.1:{port}", "--server-pid", str(server.pid), "--subscribers",
             str(args.subscribers), "--tokens", str(args.tokens), "--rate", str(args.rate),
             "--probes", "50", "--grace-s", str(args.grace_s)], check=True,
            capture_output=True, text=True, timeout=600).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["mode"] = mode
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


def table(results: list[dict[str, Any]], args: argparse.Namespace, load: float) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "bench/agent/run.py " + " ".join(sys.argv[1:])
    rows = []
    for mode in MODES:
        runs = [r for r in results if r["mode"] == mode]
        unfinished = sum(not r["finished"] for r in runs)
        note = f" ({unfinished} of {len(runs)} not delivered in time)" if unfinished else ""
        rows.append(
            f"| {mode} | {median([r['publications'] for r in runs]):g} | "
            f"{median([r['coalescing_factor'] for r in runs])} | "
            f"{median([r['latency_ms']['p50'] for r in runs])} / "
            f"{median([r['latency_ms']['p99'] for r in runs])} | "
            f"{median([r['server_cpu_us_per_token'] for r in runs])} | "
            f"{median([r['server_cpu_s'] for r in runs])} | "
            f"{median([r['elapsed_ms'] / 1000 for r in runs])} | "
            f"{sum(r['tokens_missing'] for r in runs)}{note} |")
    return "\n".join([
        BEGIN,
        f"### Agent runs: {args.subscribers} subscribers of one run ({stamp}, medians of "
        f"{args.repeats} runs)",
        "",
        f"Command: `.venv/bin/python {command.strip()}`. One run of {args.tokens} tokens made "
        f"at {args.rate}/s by `agent_run()` in the server's process, {args.subscribers} lean "
        "`ws` subscribers of `agent:<run>` on /ws/agent; each must receive every token and "
        "`run.completed`. Latency: from the token's making to its arrival at 50 probe "
        "subscribers (coalescing adds up to its 50 ms by design). Server CPU (user+system, "
        "/proc) from the run's start to the last subscriber's `run.completed`, per token "
        "delivered (tokens × subscribers); a run not delivered within its length plus "
        f"{args.grace_s} s stops there and counts the tokens missing. Server on CPU 0, "
        "clients on CPU 1; **the machine "
        f"was shared and busy** (load average {load:.1f} on 2 cores at the start), so take the "
        "ratios more than the absolute figures.",
        "",
        "| producer | publications | tokens per publication | latency p50 / p99 (ms) | "
        "server CPU per delivered token (µs) | server CPU (s) | until the last token (s) | "
        "tokens missing |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        END,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--grace-s", type=int, default=60,
                        help="seconds after the run's length to wait for the last token")
    parser.add_argument("--from", dest="source", type=Path,
                        help="render the table from a results file instead of running")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"agent-{datetime.datetime.now():%Y-%m-%dT%H%M}.jsonl"
    results = []
    if args.source is not None:
        results = [json.loads(line) for line in args.source.read_text().splitlines() if line]
        args.repeats = sum(r["mode"] == "coalesced" for r in results)
    for repeat in range(args.repeats if args.source is None else 0):
        for mode in MODES:
            result = run_once(mode, args)
            result["repeat"] = repeat
            results.append(result)
            with out.open("a") as file:
                file.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    rendered = table(results, args, load)
    print(rendered)
    if not args.no_docs:
        text = DOCS.read_text()
        if BEGIN in text:
            text = text[:text.index(BEGIN)] + rendered + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Agent runs\n\n" + rendered + "\n"
        DOCS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
