"""Run the shared benchmark scenarios against captify-ws and its peers, side by side.

    .venv/bin/python bench/run.py                 # the whole matrix (about 25 minutes)
    .venv/bin/python bench/run.py --sets fanout   # some sets only
    .venv/bin/python bench/run.py --quick         # one repeat, no extras

Each run starts ONE fresh server pinned to CPU 0 and the load generator on CPU 1
(../shared/bench/run-peer.sh), with real y-websocket clients. Results are appended as JSON lines
to bench/results/<date>.jsonl and rendered to docs/benchmarks.md with every figure next to the
@y/websocket-server (Node) figure measured in the same invocation. Benchmarks are never part of
the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workers
from summary import render_fanout_medians, render_json
from workers import render_workers

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("CAPTIFY_BENCH_DIR", ROOT.parent / "shared" / "bench"))
RESULTS = ROOT / "bench" / "results"
CAPTIFY = str(ROOT / ".venv" / "bin" / "captify-ws")

#: every captify-ws server here runs with --document-create-rate 0: the anonymous load generator
#: opens thousands of new documents from one address (idle, many-docs, join-storm), which the
#: default rate (600 a minute per address, issue 13.9) would refuse with 4429 past the 600th
FANOUT = ["--scenario", "fanout", "--edits", "200", "--rate", "20", "--settle", "30"]
CLUSTER_ARGS = [*FANOUT, "--readers", "1000", "--probes", "50"]
#: bench/hocuspocus_multiplex.mjs: 200 documents × 2 providers over 20 shared sockets
MULTIPLEX = ["--sockets", "20", "--docs", "200", "--rate", "5", "--duration", "15"]

#: ../shared/bench/jsonfanout.mjs: 1 writer, 1000 readers over the seed's JSON protocol
JSON_FANOUT = ["--readers", "1000", "--edits", "200", "--rate", "20", "--probes", "50",
               "--settle", "30"]
#: bench/json_many_docs.mjs: 200 documents × 2 JSON clients, 5 edits/s each, 15 s
JSON_MANY = ["--docs", "200", "--rate", "5", "--duration", "15", "--settle", "20"]
#: interleaved repeats: every peer of a set runs once per repeat before the next repeat starts
REPEATS = ("", "-r2", "-r3", "-r4", "-r5")

#: set name → list of (tag, peers, loadgen args); peers from PEERS below.
MATRIX: dict[str, list[tuple[str, list[str], list[str]]]] = {
    "fanout": [
        ("fanout-100", ["captify", "ywss"], [*FANOUT, "--readers", "100"]),
        ("fanout-500", ["captify", "ywss"], [*FANOUT, "--readers", "500", "--probes", "50"]),
        ("fanout-1000", ["captify", "captify-sqlite", "ywss", "hocuspocus"],
         [*FANOUT, "--readers", "1000", "--probes", "50"]),
        ("fanout-1000-r2", ["captify", "ywss"], [*FANOUT, "--readers", "1000", "--probes", "50"]),
        ("fanout-1000-r3", ["captify", "captify-sqlite", "ywss"],
         [*FANOUT, "--readers", "1000", "--probes", "50"]),
    ],
    "rate100": [
        ("fanout-1000-lean-r100", ["captify", "captify-sqlite", "ywss"],
         ["--scenario", "fanout", "--readers", "1000", "--edits", "500", "--rate", "100",
          "--probes", "50", "--settle", "30", "--client", "lean"]),
    ],
    "json": [
        # JSON fan-out beside the seed's stack, and captify-ws's own y-websocket path (and
        # ywss) in the same repeat: the JSON path's cost is compared with both.
        run for sfx in REPEATS for run in (
            (f"json-fanout-1000{sfx}", ["captify-json", "seed-json"], JSON_FANOUT),
            (f"fanout-1000-yws{sfx}", ["captify", "ywss"],
             [*FANOUT, "--readers", "1000", "--probes", "50"]),
            # the same with every reader reading (no paused sinks), as the JSON readers do
            (f"fanout-1000-yws-reading{sfx}", ["captify", "ywss"],
             [*FANOUT, "--readers", "1000", "--probes", "1000"]))
    ],
    "json-many": [
        (f"json-many-docs-200{sfx}", ["captify-json-many", "seed-json-many"], JSON_MANY)
        for sfx in REPEATS[:3]
    ],
    "rate200": [
        (f"fanout-1000-lean-r200{sfx}", ["captify", "ywss"],
         ["--scenario", "fanout", "--readers", "1000", "--edits", "1000", "--rate", "200",
          "--probes", "50", "--settle", "40", "--client", "lean", "--max-seconds", "180"])
        for sfx in REPEATS[:3]
    ],
    "scale": [
        ("fanout-10000", ["captify"],
         [*FANOUT, "--readers", "10000", "--probes", "50", "--client", "lean",
          "--connect-timeout", "240", "--max-seconds", "400"]),
        ("idle-10000-distinct", ["captify"],
         ["--scenario", "idle", "--client", "lean", "--connections", "10000",
          "--idle-docs", "distinct", "--hold", "5", "--max-seconds", "300"]),
    ],
    "ab": [
        # A/B of two builds in one invocation: captify-base runs the source tree named by
        # CAPTIFY_BASE_SRC (e.g. `git archive <commit> src | tar -x -C /tmp/base`).
        run for sfx in REPEATS[:3] for run in (
            (f"fanout-1000-ab-r20{sfx}", ["captify", "captify-base"],
             [*FANOUT, "--readers", "1000", "--probes", "50"]),
            (f"fanout-1000-ab-r200{sfx}", ["captify", "captify-base"],
             ["--scenario", "fanout", "--readers", "1000", "--edits", "1000", "--rate", "200",
              "--probes", "50", "--settle", "40", "--client", "lean", "--max-seconds", "180"]))
    ],
    "ab-arch": [
        # Issue 15's check: y-websocket fan-out and many documents against @y/websocket-server,
        # this build and another (CAPTIFY_BASE_SRC: the build before a redesign) in one repeat.
        *((f"fanout-1000-arch{sfx}", ["captify", "captify-base", "ywss"],
           [*FANOUT, "--readers", "1000", "--probes", "50"]) for sfx in REPEATS[:3]),
        *((f"many-docs-200-arch{sfx}", ["captify", "captify-base", "ywss"],
           ["--scenario", "many-docs", "--docs", "200", "--rate", "5", "--duration", "15",
            "--settle", "30"]) for sfx in REPEATS[:2]),
    ],
    "ab-10000": [
        ("fanout-10000-ab", ["captify", "captify-base"],
         [*FANOUT, "--readers", "10000", "--probes", "50", "--client", "lean",
          "--connect-timeout", "240", "--max-seconds", "400"]),
    ],
    "ab-json": [
        (f"json-many-docs-200-ab{sfx}", ["captify-json-many", "captify-base-many",
                                         "seed-json-many"], JSON_MANY)
        for sfx in REPEATS[:2]
    ],
    "fanout5000": [
        ("fanout-5000", ["captify"],
         [*FANOUT, "--readers", "5000", "--probes", "50", "--connect-timeout", "120",
          "--max-seconds", "240"]),
    ],
    "awareness": [
        ("fanout-1000-awareness", ["captify", "ywss"],
         [*FANOUT, "--readers", "1000", "--probes", "50", "--awareness", "--max-seconds", "150"]),
    ],
    "many": [
        ("many-docs-200", ["captify", "captify-sqlite", "ywss"],
         ["--scenario", "many-docs", "--docs", "200", "--rate", "5", "--duration", "15",
          "--settle", "30"]),
        ("many-docs-200-r2", ["captify", "captify-sqlite", "ywss"],
         ["--scenario", "many-docs", "--docs", "200", "--rate", "5", "--duration", "15",
          "--settle", "30"]),
    ],
    "idle": [
        ("idle-1000-distinct", ["captify", "ywss"],
         ["--scenario", "idle", "--client", "lean", "--connections", "1000",
          "--idle-docs", "distinct", "--hold", "5"]),
        ("idle-5000-distinct", ["captify", "ywss"],
         ["--scenario", "idle", "--client", "lean", "--connections", "5000",
          "--idle-docs", "distinct", "--hold", "5"]),
    ],
    "large": [
        ("large-doc", ["captify", "ywss"],
         ["--scenario", "large-doc", "--ld-updates", "20000", "--ld-chunk", "50",
          "--sync-repeats", "5", "--duration", "60"]),
    ],
    "store": [
        ("store-load-20000", ["store-load"], []),
    ],
    "cluster": [
        ("fanout-1000-2-instances", ["captify-2"], CLUSTER_ARGS),
    ],
    # issue 20 item 4: --workers 2 with Redis against one worker (bench/workers.py)
    "workers": workers.matrix(REPEATS[:3]),
    "hocuspocus": [
        *((tag, ["captify-hp", "hocuspocus"], [*FANOUT, "--readers", "1000", "--probes", "50"])
          for tag in ("hp-fanout-1000", "hp-fanout-1000-r2", "hp-fanout-1000-r3")),
        *((tag, ["captify-hp-mx", "hocuspocus-mx"], MULTIPLEX)
          for tag in ("hp-multiplex-200", "hp-multiplex-200-r2", "hp-multiplex-200-r3")),
    ],
    "join": [
        ("join-storm-20x10", ["captify", "ywss"],
         ["--scenario", "join-storm", "--docs", "20", "--clients-per-doc", "10",
          "--settle", "10"]),
        ("join-storm-1x200", ["captify", "ywss"],
         ["--scenario", "join-storm", "--docs", "1", "--clients-per-doc", "200",
          "--settle", "10"]),
    ],
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                         check=False).stdout
    return [int(x) for x in out.split()]


def run_cluster(port: int, workdir: Path) -> dict[str, Any]:
    """Fan-out across two processes (--workers 2: SO_REUSEPORT splits the readers over both,
    the writer lands on one), Redis between them; CPU summed over both workers."""
    redis_pid = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True,
                               text=True, check=False).stdout.split()
    db = workdir / f"cluster-{port}.db"
    server = subprocess.Popen(
        ["taskset", "-c", "0", CAPTIFY, "serve", "--port", str(port), "--workers", "2",
         "--broker", "redis://127.0.0.1:6379/0", "--broker-prefix", f"bench{port}",
         "--store", f"sqlite:///{db}", "--log-level", "warning", "--document-create-rate", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        workers = _children(server.pid)
        redis = [int(p) for p in redis_pid[:1]]
        before = sum(_cpu_seconds(p) for p in workers)
        redis_before = sum(_cpu_seconds(p) for p in redis)
        result = subprocess.run(
            [str(BENCH / "loadgen.sh"), "--url", f"ws://127.0.0.1:{port}/ws/fabric",
             "--label", "captify-ws-2-workers", "--max-seconds", "120", *CLUSTER_ARGS],
            capture_output=True, text=True, timeout=600, check=False)
        cpu = sum(_cpu_seconds(p) for p in workers) - before
        redis_cpu = sum(_cpu_seconds(p) for p in redis) - redis_before
    finally:
        server.terminate()
        server.wait(30)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": result.stderr[-500:]}
    copies = (data.get("deliveries") or 0) + (data.get("edits_sent") or 0)
    data["peer"] = "captify-2"
    data["tag"] = "fanout-1000-2-instances"
    data["server_cpu_us_per_delivery"] = round(cpu / copies * 1e6, 2) if copies else None
    data["server"] = {"cpu_s": round(cpu, 2), "workers": len(workers),
                      "redis_cpu_s": round(redis_cpu, 2),
                      "cpu_pct_of_core": None}
    return data


def run_store_load() -> dict[str, Any]:
    out = subprocess.run(["taskset", "-c", "0", sys.executable,
                          str(ROOT / "bench" / "store_load.py")],
                         capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}
    data.update({"peer": "store-load", "tag": "store-load-20000"})
    return data


def peer_command(peer: str, port: int, workdir: Path) -> tuple[str, list[str]]:
    """The run-peer.sh PEER argument and extra loadgen args for one peer."""
    if peer == "captify":
        return (f"cmd:{CAPTIFY} serve --port {{PORT}} --store memory --log-level warning "
                "--document-create-rate 0",
                ["--url", f"ws://127.0.0.1:{port}/ws/fabric", "--label", "captify-ws"])
    if peer == "captify-sqlite":
        db = workdir / f"bench-{port}-{time.time_ns()}.db"
        return (f"cmd:{CAPTIFY} serve --port {{PORT}} --store sqlite:///{db} "
                "--log-level warning --document-create-rate 0",
                ["--url", f"ws://127.0.0.1:{port}/ws/fabric", "--label", "captify-ws-sqlite"])
    if peer == "captify-base":
        base = os.environ.get("CAPTIFY_BASE_SRC")
        if not base:
            raise SystemExit("the ab sets compare with another build: set CAPTIFY_BASE_SRC to "
                             "its src folder (git archive <commit> src | tar -x -C DIR)")
        # the setting as an environment variable: a base build from before it ignores it
        return (f"cmd:env PYTHONPATH={base} CAPTIFY_WS_DOCUMENT_CREATE_RATE=0 {sys.executable} "
                "-m captify_ws serve --port {PORT} --store memory --log-level warning",
                ["--url", f"ws://127.0.0.1:{port}/ws/fabric", "--label", "captify-ws base"])
    if peer == "captify-json":
        return (f"cmd:{CAPTIFY} serve --port {{PORT}} --store memory --log-level warning "
                "--document-create-rate 0",
                ["--url", f"ws://127.0.0.1:{port}/ws/fabric", "--label", "captify-ws JSON"])
    if peer == "seed-json":
        return peer, ["--url", f"ws://127.0.0.1:{port}/ws/fabric", "--label", "seed-json"]
    if peer == "captify-hp":
        return (f"cmd:{CAPTIFY} serve --port {{PORT}} --store memory --log-level warning "
                "--document-create-rate 0",
                ["--url", f"ws://127.0.0.1:{port}/ws/hocuspocus", "--protocol", "hocuspocus",
                 "--label", "captify-ws /ws/hocuspocus"])
    return peer, ["--label", peer]


def run_multiplex(peer: str, port: int, tag: str, args: list[str]) -> dict[str, Any]:
    """bench/hocuspocus_multiplex.mjs (many documents over shared sockets) against captify-ws
    or Hocuspocus 3.4.4, server on CPU 0 and clients on CPU 1, one fresh server per run."""
    work = Path(os.environ.get("BENCH_WORK", "/tmp/bench-work"))
    if peer == "hocuspocus-mx":
        hocus = work / "peers" / "hocus"
        shutil.copy(BENCH / "peers" / "hocuspocus-server.mjs", hocus)
        command = ["node", str(hocus / "hocuspocus-server.mjs"), str(port)]
        url, label = f"ws://127.0.0.1:{port}", "hocuspocus"
    else:
        command = [CAPTIFY, "serve", "--port", str(port), "--store", "memory",
                   "--log-level", "warning", "--document-create-rate", "0"]
        url, label = f"ws://127.0.0.1:{port}/ws/hocuspocus", "captify-ws /ws/hocuspocus"
    print(f"[bench] {time.strftime('%H:%M:%S')} {peer} {tag}", file=sys.stderr, flush=True)
    server = subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                             capture_output=True, check=False).returncode:
            if time.monotonic() > deadline or server.poll() is not None:
                return {"peer": peer, "tag": tag, "error": "server did not start"}
            time.sleep(0.1)
        time.sleep(0.5)
        result = subprocess.run(
            ["taskset", "-c", "1", "node", str(ROOT / "bench" / "hocuspocus_multiplex.mjs"),
             "--url", url, "--server-pid", str(server.pid), "--label", label, *args],
            capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.terminate()
        server.wait(30)
    return _last_record(result, peer, tag)


def run_json_many(peer: str, port: int, tag: str, args: list[str]) -> dict[str, Any]:
    """bench/json_many_docs.mjs against captify-ws or the seed's stack (seed-json), server on
    CPU 0 and clients on CPU 1, one fresh server per run."""
    if peer == "seed-json-many":
        work = Path(os.environ.get("BENCH_WORK", "/tmp/bench-work")) / "harness"
        shutil.copy(BENCH / "peers" / "seed-json-server.mjs", work)
        command = ["node", str(work / "seed-json-server.mjs"), str(port)]
        label = "seed-json"
    elif peer == "captify-base-many":
        command = ["env", f"PYTHONPATH={os.environ['CAPTIFY_BASE_SRC']}",
                   "CAPTIFY_WS_DOCUMENT_CREATE_RATE=0", sys.executable, "-m",
                   "captify_ws", "serve", "--port", str(port), "--store", "memory",
                   "--log-level", "warning"]
        label = "captify-ws JSON base"
    else:
        command = [CAPTIFY, "serve", "--port", str(port), "--store", "memory",
                   "--log-level", "warning", "--document-create-rate", "0"]
        label = "captify-ws JSON"
    print(f"[bench] {time.strftime('%H:%M:%S')} {peer} {tag}", file=sys.stderr, flush=True)
    server = subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        if not _wait_for_port(port, server):
            return {"peer": peer, "tag": tag, "error": "server did not start"}
        result = subprocess.run(
            ["taskset", "-c", "1", "node", str(ROOT / "bench" / "json_many_docs.mjs"),
             "--url", f"ws://127.0.0.1:{port}/ws/fabric", "--server-pid", str(server.pid),
             "--label", label, *args],
            capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.terminate()
        server.wait(30)
    return _last_record(result, peer, tag)


def _last_record(result: subprocess.CompletedProcess[str], peer: str, tag: str
                 ) -> dict[str, Any]:
    """A load generator's last JSON line (its result), or its error output, tagged."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {
        "error": (result.stderr or "no output")[-500:]}
    data.update({"peer": peer, "tag": tag})
    return data


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 20
    while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                         capture_output=True, check=False).returncode:
        if time.monotonic() > deadline or server.poll() is not None:
            return False
        time.sleep(0.1)
    time.sleep(0.5)
    return True


def run_one(peer: str, port: int, tag: str, args: list[str], workdir: Path) -> dict[str, Any]:
    spec, extra = peer_command(peer, port, workdir)
    env = None
    if tag.startswith("json-fanout"):
        # ../shared/bench/jsonfanout.mjs takes no --max-seconds (it is bounded by --settle)
        env = {**os.environ, "LOADGEN": "jsonfanout"}
        command = [str(BENCH / "run-peer.sh"), spec, str(port), *args, *extra]
    else:
        command = [str(BENCH / "run-peer.sh"), spec, str(port), "--max-seconds", "120", *args,
                   *extra]
    print(f"[bench] {time.strftime('%H:%M:%S')} {peer} {tag}", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
                            env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"peer": peer, "tag": tag, "error": (result.stderr or "no output")[-500:]}
    data: dict[str, Any] = json.loads(lines[-1])
    data["peer"] = peer
    data["tag"] = tag
    return data


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(ours: Any, ref: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(ref, (int, float)) or not ref:
        return "–"
    return f"{ours / ref:.2f}×"


def render(results: list[dict[str, Any]], command: str) -> str:
    by_tag: dict[str, dict[str, dict[str, Any]]] = {}
    for result in results:
        by_tag.setdefault(result["tag"], {})[result["peer"]] = result
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} on this machine ({os.cpu_count()} cores, "
        f"{cpu}, Python {platform.python_version()}), with `{command}`: ../shared/bench, real "
        "y-websocket 3.1 clients, each server alone on CPU 0, the load generator on CPU 1, one "
        "fresh server per run. `captify-ws` runs the native transport with the memory store; "
        "`captify-ws-sqlite` with the SQLite store (group commit on). Ratios are against "
        "@y/websocket-server 0.1.1 (`ywss`) in the same invocation; lower is better except where "
        "noted.",
        "",
    ]
    lines += render_json(by_tag)
    lines += render_hocuspocus(by_tag)
    lines += render_workers(by_tag)
    fanout_tags = [t for t in by_tag if t.startswith("fanout")]
    if fanout_tags:
        lines += ["## Fan-out (1 writer, N readers)", "",
                  "| run | server | N | edits/s | p50 ms | p99 ms | max ms | server µs/copy | "
                  "vs ywss µs/copy | vs ywss p99 | server CPU % | converged | server state |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for tag in fanout_tags:
            ref = by_tag[tag].get("ywss", {})
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                params = r.get("params") or {}
                note = ""
                if peer == "captify-2":
                    note = (f" (2 workers; Redis used {r['server'].get('redis_cpu_s')} s CPU "
                            "besides)")
                lines.append("| " + " | ".join([
                    tag + note, r.get("label") or peer, _fmt(params.get("readers")),
                    _fmt(params.get("rate")), _fmt(lat.get("p50")), _fmt(lat.get("p99")),
                    _fmt(lat.get("max")), _fmt(r.get("server_cpu_us_per_delivery")),
                    _ratio(r.get("server_cpu_us_per_delivery"),
                           ref.get("server_cpu_us_per_delivery")),
                    _ratio(lat.get("p99"), (ref.get("latency_ms") or {}).get("p99")),
                    _fmt((r.get("server") or {}).get("cpu_pct_of_core")),
                    _fmt(r.get("all_converged")), _fmt(r.get("server_state_converged")),
                ]) + (f" {r['error'][:80]}" if r.get("error") else "") + " |")
        lines.append("")
        lines += render_fanout_medians(by_tag)
    many = [t for t in by_tag if t.startswith("many")]
    if many:
        lines += ["## Many documents (D documents × 2 clients, 5 edits/s each)", "",
                  "| run | server | p50 ms | p99 ms | server µs/edit | vs ywss | server CPU % | "
                  "converged docs |", "|---|---|---|---|---|---|---|---|"]
        for tag in many:
            ref = by_tag[tag].get("ywss", {})
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, _fmt(lat.get("p50")), _fmt(lat.get("p99")),
                    _fmt(r.get("server_cpu_us_per_edit")),
                    _ratio(r.get("server_cpu_us_per_edit"), ref.get("server_cpu_us_per_edit")),
                    _fmt((r.get("server") or {}).get("cpu_pct_of_core")),
                    f"{r.get('converged_docs', '–')}/{(r.get('params') or {}).get('docs', '–')}",
                ]) + " |")
        lines.append("")
    idle = [t for t in by_tag if t.startswith("idle")]
    if idle:
        lines += ["## Idle connections (lean clients, distinct documents, held 5 s)", "",
                  "| run | server | connected | KB per connection | vs ywss | RSS before MB | "
                  "RSS after MB | connect ms |", "|---|---|---|---|---|---|---|---|"]
        for tag in idle:
            ref = by_tag[tag].get("ywss", {})
            for peer, r in by_tag[tag].items():
                rss = r.get("server_rss_kb") or {}
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, _fmt((r.get("connect") or {}).get("connected")),
                    _fmt(r.get("kb_per_conn")), _ratio(r.get("kb_per_conn"),
                                                       ref.get("kb_per_conn")),
                    _fmt((rss.get("before") or 0) / 1024), _fmt((rss.get("after_hold") or 0)
                                                                / 1024),
                    _fmt((r.get("connect") or {}).get("ms")),
                ]) + " |")
        lines.append("")
    large = [t for t in by_tag if t.startswith("large")]
    if large:
        lines += ["## Large document (20,000 random inserts, ~1.7 MB state; 5 fresh syncs)", "",
                  "| server | state bytes | ingest updates/s | sync median ms | vs ywss | "
                  "identical |", "|---|---|---|---|---|---|"]
        for tag in large:
            ref = by_tag[tag].get("ywss", {})
            for peer, r in by_tag[tag].items():
                build = r.get("build") or {}
                sync = r.get("sync_ms") or {}
                ref_sync = (ref.get("sync_ms") or {}).get("median")
                lines.append("| " + " | ".join([
                    r.get("label") or peer, _fmt(build.get("state_update_bytes")),
                    _fmt(build.get("server_ingest_updates_per_s")), _fmt(sync.get("median")),
                    _ratio(sync.get("median"), ref_sync), _fmt(r.get("sync_identical")),
                ]) + " |")
        lines.append("")
    store = [t for t in by_tag if t.startswith("store")]
    if store:
        r = by_tag[store[0]]["store-load"]
        lines += ["## Loading a document built from 20,000 updates (SQLite store)", "",
                  "| updates | snapshot bytes | load from the raw log ms | load after "
                  "compaction ms |", "|---|---|---|---|",
                  f"| {_fmt(r.get('updates'))} | {_fmt(r.get('snapshot_bytes'))} | "
                  f"{_fmt(r.get('load_raw_log_ms'))} | {_fmt(r.get('load_after_compaction_ms'))} |",
                  "", "(`bench/store_load.py`; the room compacts its log after 500 updates and "
                  "on unload, so the second figure is what a load costs.)", ""]
    join = [t for t in by_tag if t.startswith("join")]
    if join:
        lines += ["## Join storm (all clients join new documents at once)", "",
                  "| run | server | connected | failed | all synced | connect ms | docs fully ok |",
                  "|---|---|---|---|---|---|---|"]
        for tag in join:
            for peer, r in by_tag[tag].items():
                connect = r.get("connect") or {}
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, _fmt(connect.get("connected")),
                    _fmt(connect.get("failed")), _fmt(r.get("all_synced")),
                    _fmt(connect.get("ms")),
                    _fmt(r.get("docs_fully_ok")),
                ]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n" + NOTES


def _median(values: list[Any]) -> Any:
    numbers = sorted(v for v in values if isinstance(v, (int, float)))
    return numbers[len(numbers) // 2] if numbers else None


def render_hocuspocus(by_tag: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The /ws/hocuspocus tables: each run beside Hocuspocus 3.4.4, then medians."""
    lines: list[str] = []
    fanout = [t for t in by_tag if t.startswith("hp-fanout")]
    if fanout:
        lines += ["## Hocuspocus protocol: fan-out (1 writer, 1000 HocuspocusProviders)", "",
                  "Both servers speak the Hocuspocus protocol to real `@hocuspocus/provider` "
                  "3.4.4 clients (`--protocol hocuspocus`): captify-ws on `/ws/hocuspocus`, "
                  "the peer `hocuspocus` is @hocuspocus/server 3.4.4 without extensions. "
                  "Ratios are against Hocuspocus in the same invocation.", "",
                  "| run | server | p50 ms | p99 ms | server µs/copy | vs Hocuspocus µs/copy | "
                  "vs Hocuspocus p99 | server CPU % | converged | server state |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ratios: list[tuple[float, float]] = []
        for tag in fanout:
            ref = by_tag[tag].get("hocuspocus", {})
            ref_p99 = (ref.get("latency_ms") or {}).get("p99")
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                cost = r.get("server_cpu_us_per_delivery")
                if peer != "hocuspocus" and cost and ref.get("server_cpu_us_per_delivery") and \
                        lat.get("p99") and ref_p99:
                    ratios.append((cost / ref["server_cpu_us_per_delivery"],
                                   lat["p99"] / ref_p99))
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, _fmt(lat.get("p50")), _fmt(lat.get("p99")),
                    _fmt(cost), _ratio(cost, ref.get("server_cpu_us_per_delivery")),
                    _ratio(lat.get("p99"), ref_p99),
                    _fmt((r.get("server") or {}).get("cpu_pct_of_core")),
                    _fmt(r.get("all_converged")), _fmt(r.get("server_state_converged")),
                ]) + (f" {r['error'][:80]}" if r.get("error") else "") + " |")
        if ratios:
            lines += ["", f"Medians over {len(ratios)} runs: server CPU per copy "
                      f"{_median([c for c, _ in ratios]):.2f}× Hocuspocus's, p99 "
                      f"{_median([p for _, p in ratios]):.2f}× Hocuspocus's."]
        lines.append("")
    multiplex = [t for t in by_tag if t.startswith("hp-multiplex")]
    if multiplex:
        lines += ["## Hocuspocus protocol: many documents over shared sockets", "",
                  "`bench/hocuspocus_multiplex.mjs`: 200 documents, each opened by two "
                  "`@hocuspocus/provider` 3.4.4 providers on two of 20 shared "
                  "`HocuspocusProviderWebsocket`s (20 documents per socket), each provider "
                  "appending to its own Y.Text at 5 edits/s for 15 s; latency measured at the "
                  "document's other provider.", "",
                  "| run | server | edits | p50 ms | p99 ms | server µs/edit | vs Hocuspocus | "
                  "converged docs | unacknowledged |", "|---|---|---|---|---|---|---|---|---|"]
        for tag in multiplex:
            ref = by_tag[tag].get("hocuspocus-mx", {})
            for peer, r in by_tag[tag].items():
                lat = r.get("latency_ms") or {}
                lines.append("| " + " | ".join([
                    tag, r.get("label") or peer, _fmt(r.get("edits")), _fmt(lat.get("p50")),
                    _fmt(lat.get("p99")), _fmt(r.get("server_cpu_us_per_edit")),
                    _ratio(r.get("server_cpu_us_per_edit"), ref.get("server_cpu_us_per_edit")),
                    f"{r.get('converged_docs', '–')}/{(r.get('params') or {}).get('docs', '–')}",
                    _fmt(r.get("unacknowledged_providers")),
                ]) + (f" {r['error'][:80]}" if r.get("error") else "") + " |")
        lines.append("")
    return lines


NOTES = """
## Reading these figures

- **The machine was busy.** These runs (2026-12-01) shared the 2-core VM with six other
  engineers' test suites (load average 2–4; Chromium, pytest, Redis and PostgreSQL clients on
  both cores). Pinning keeps the server on CPU 0 and the load generator on CPU 1, but not
  alone there: absolute latencies swing by 10–100× between repeats (the load generator's own
  event loop stalled for up to 0.5 s — `client.eventloop_lag_max_ms` in the JSON lines), so
  only ratios measured within one repeat are compared, as medians of interleaved repeats with
  their spread (min–max). Server CPU per copy is the steadiest figure.
- **Write coalescing** (issue 20, item 3): every update that arrives in one loop turn is
  integrated in one batch, and each member gets the batch's frames in one write (one
  `writev` of the same frame objects for every socket); a queue that waited for a full
  transport leaves in one write when it drains. At 200 edits/s to 1000 readers the server
  spent 0.8–2.0 µs per copy instead of 9–11 µs (the `ab` set runs the build before coalescing,
  `CAPTIFY_BASE_SRC`, in the same invocation): p50 100–126 ms against 19.6–19.7 s, p99
  0.6–0.7 s against 31.6–33.9 s, all converged. @y/websocket-server at the same rate: 20–22
  µs per copy, p99 58–91 s. One update per turn takes the same path as before (nothing waits
  for the end of the turn), so low rates gain nothing and lose nothing.
- **What is left per copy** (py-spy, 1000 readers): 85–89% of the server's samples are the
  socket write itself (`NativeConnection._write` → uvloop → `write()`/`send()`), on both the
  y-websocket and the JSON path; building the message is below 1% (`encode_update` 0.4% for
  JSON: one encoding per broadcast). At 20 edits/s every turn has one frame per socket, so
  the cost per copy is one system call and the kernel's loopback TCP work for it (charged to
  the sending core); 0.70× of Node's per-copy cost at that rate needs fewer system calls per
  copy than one, which only batching across turns (added latency) or io_uring could give.
- **Paused sinks flatter high rates.** With `--probes 50`, 950 (or 9950) readers are paused
  sockets: once their kernel buffers are full the server queues their frames and writes them
  in one write when they resume, at the end. Server CPU per copy at 200 edits/s and at 10,000
  readers therefore counts many copies per system call; the probes' latencies are live.
- JSON fan-out: `jsonfanout.mjs` keeps all 1000 JSON readers reading (no paused sinks),
  while the y-websocket fan-out pauses 950 of them; the JSON path's cost per copy is
  compared with the y-websocket path of the same repeat with that difference in it.
- Idle connections: 9.2 KB per connection with a document each, at 10,000 and at 5,000
  (0.57× @y/websocket-server's 16.25 at 5,000; 2026-12-01 06:50, busy machine), down from
  15.2-16.2: a tracemalloc census of a server holding 1,000-2,000 idle connections (issue
  20.5) found picows' handshake headers kept for the socket's life, a pycrdt `Doc` and a
  presence per document nobody had written to, bound methods and dicts per socket and room;
  what is left is mostly picows' 2 KB read buffer, its transport, and uvloop's (~5 KB).
- The large-doc `state bytes` may differ between servers when updates are integrated in
  batches (a merged update is encoded more compactly); the synced text is identical.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(s for s in MATRIX if not s.startswith("ab")),
                        help=f"comma-separated sets of {', '.join(MATRIX)} (the ab* sets "
                        "need CAPTIFY_BASE_SRC and are not in the default)")
    parser.add_argument("--quick", action="store_true", help="skip repeats (tags ending -r2)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--port", type=int, default=13100)
    parser.add_argument("--render-only", metavar="JSONL",
                        help="render an earlier results file instead of running")
    options = parser.parse_args()
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    if options.render_only:
        results = [json.loads(line) for line in Path(options.render_only).read_text().splitlines()
                   if line.strip()]
        Path(options.out).write_text(render(results, command))
        return 0
    if not (BENCH / "run-peer.sh").exists():
        print(f"bench: {BENCH} not found (set CAPTIFY_BENCH_DIR)", file=sys.stderr)
        return 2
    subprocess.run([str(BENCH / "setup.sh"), "--peers"], check=True, capture_output=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    jsonl = RESULTS / f"{datetime.datetime.now():%Y-%m-%dT%H%M}.jsonl"
    workdir = Path(tempfile.mkdtemp(prefix="captify-bench-"))
    results: list[dict[str, Any]] = []
    port = options.port
    try:
        for name in options.sets.split(","):
            for tag, peers, args in MATRIX[name.strip()]:
                if options.quick and tag[-3:-1] == "-r" and tag[-1] in "23456789":
                    continue
                for peer in peers:
                    port += 1
                    if peer in workers.LAYOUTS:
                        print(f"[bench] {time.strftime('%H:%M:%S')} {peer} {tag}",
                              file=sys.stderr, flush=True)
                        result = workers.run(peer, port, tag, args, workdir, BENCH)
                    elif peer == "captify-2":
                        result = run_cluster(port, workdir)
                    elif peer == "store-load":
                        result = run_store_load()
                    elif peer.endswith("-mx"):
                        result = run_multiplex(peer, port, tag, args)
                    elif peer.endswith("-many"):
                        result = run_json_many(peer, port, tag, args)
                    else:
                        result = run_one(peer, port, tag, args, workdir)
                    results.append(result)
                    with jsonl.open("a") as out:
                        out.write(json.dumps(result) + "\n")
                    time.sleep(2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    Path(options.out).write_text(render(results, command))
    print(f"[bench] wrote {options.out} and {jsonl}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
